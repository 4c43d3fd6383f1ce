"""data: ingest, CSV tables, DICOM reading and geometry, conversion, crops and folds.

What the models read of it (crop tensors, localizer samples) is in ``spinegrade.models``.
"""
