"""The ``data`` section: where the RSNA-layout dataset comes from."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError

# The synthesize stage's output: the dataset ingest reads when data.source is synthetic.
SYNTHETIC_ROOT = "data/raw"


class DataConfig(Section):
    """Where the RSNA-layout dataset comes from.

    ``root`` is also ingest's (and convert-dicom's) DVC dependency (``${data.root}`` in
    dvc.yaml), so any change to the files under it makes the pipeline stale.

    Attributes:
        source: ``synthetic``: the synthesize stage generates a dataset into ``data/raw``;
            ``rsna``: a real download, read in place.
        root: the dataset folder ingest reads: ``data/raw`` for ``synthetic``; for ``rsna``
            the unpacked competition download (the folder holding train.csv and
            train_images/), either tracked in the workspace (``dvc add data/rsna``) or an
            absolute path outside it. Relative paths are resolved against the repository.
    """

    key: ClassVar[str] = "data"

    source: Literal["synthetic", "rsna"] = "synthetic"
    root: str = SYNTHETIC_ROOT

    @model_validator(mode="after")
    def _check(self) -> Self:
        synthetic_root = Path(self.root).as_posix().rstrip("/") == SYNTHETIC_ROOT
        if self.source == "synthetic" and not synthetic_root:
            raise ConfigError(
                f"data.root must be {SYNTHETIC_ROOT} when data.source is synthetic (the "
                f"synthesize stage writes the dataset there), got {self.root!r}; set "
                "data.source: rsna to read a download"
            )
        if self.source == "rsna" and synthetic_root:
            raise ConfigError(
                f"data.root: {SYNTHETIC_ROOT} is the synthesize stage's output; with "
                "data.source: rsna point it at the download (data/rsna after "
                "`dvc add data/rsna`, or an absolute path)"
            )
        return self
