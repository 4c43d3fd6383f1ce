"""The project's expected errors: each message names the file, row or key at fault."""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """A params file that does not match the expected schema."""


class DataError(ValueError):
    """Input data that breaks the dataset's contract; the message names file and line."""


class DicomError(ValueError):
    """An unreadable, truncated or geometry-less DICOM file; the message names it."""


class TrainingError(RuntimeError):
    """Training that cannot go on: a non-finite loss, a GPU out of memory; the message
    names the job, the epoch and the param to change."""


# pydantic's ValidationError: a config model built from a file other than params.yaml (a
# trained localizer's localizer.json) with a bad value.
EXPECTED_ERRORS = (
    ConfigError,
    DataError,
    DicomError,
    TrainingError,
    FileNotFoundError,
    ValidationError,
)
