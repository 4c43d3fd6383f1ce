"""Where predict's models and class prior come from (``BundleFiles``), and where a finished
``make repro`` leaves them: one place for the workspace's layout, which predict's and
serve's command lines take as defaults. Light to import (no torch), so that a parser can
read its defaults from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundleFiles:
    """Where predict's models and class prior come from: a finished ``dvc repro``'s outputs.

    Attributes:
        models: train-per-condition outputs ({group}/{backbone}/).
        localizers: train-localizer outputs ({series type}/).
        selection: compare-backbones' choice (data/compare-backbones/choice.json: the model
            per group), or its comparison report (reports/compare-backbones.json).
        labels: ingest's labels.csv (training labels: the class prior).
    """

    models: str | Path
    localizers: str | Path
    selection: str | Path
    labels: str | Path

    @classmethod
    def workspace(cls, root: str | Path = ".") -> BundleFiles:
        """The DVC outputs of a finished ``make repro`` in the workspace ``root`` (the
        default names them relative to the current folder: ``models``, ...)."""
        root = Path(root)
        return cls(
            root / "models",
            root / "localizers",
            root / "data" / "compare-backbones" / "choice.json",
            root / "data" / "ingest" / "labels.csv",
        )

    def missing(self) -> list[Path]:
        """The files and folders named here that do not exist."""
        named = (self.models, self.localizers, self.selection, self.labels)
        return [Path(p) for p in named if not Path(p).exists()]
