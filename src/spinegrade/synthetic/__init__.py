"""synthetic: the RSNA-format phantom generator (read by the ingest stage and the tests only)."""

from spinegrade.synthetic.dataset import generate_dataset

__all__ = ["generate_dataset"]
