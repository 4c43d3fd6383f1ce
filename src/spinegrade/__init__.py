"""spinegrade: a reproducible DVC + MLflow workflow for lumbar spine MRI severity grading."""

__version__ = "0.1.0"
