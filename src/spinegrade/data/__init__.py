"""data: ingest, CSV tables, DICOM reading and geometry, conversion, crops, folds, and the
inputs models read (crop tensors, localizer samples)."""
