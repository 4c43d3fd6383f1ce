"""Reading a study for prediction: its listed series as position-sorted stacks by type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade.core.errors import DicomError
from spinegrade.data.crops import normalize_stack
from spinegrade.data.dicom import Stack, read_series


@dataclass
class StudyVolumes:
    """A study's readable stacks by series type: (series_id, stack index, Stack, normalized)."""

    study_id: int
    stacks: dict[str, list[tuple[int, int, Stack, np.ndarray]]] = field(default_factory=dict)

    def series(self, series_type: str) -> list[tuple[int, int, Stack, np.ndarray]]:
        return self.stacks.get(series_type, [])

    def find(self, series_id: int, stack: int) -> tuple[Stack, np.ndarray]:
        for sid, k, st, norm in (s for v in self.stacks.values() for s in v):
            if sid == series_id and k == stack:
                return st, norm
        raise KeyError((series_id, stack))


def read_study(
    images_dir: str | Path, study_id: int, series: pd.DataFrame, on_error: str, warn
) -> StudyVolumes:
    """Read a study's listed series; a corrupt file is skipped (``on_error`` skip) or
    raises DicomError naming it; an unreadable or absent series is left out, with a warning."""
    vols = StudyVolumes(study_id)
    for r in series.itertuples(index=False):
        directory = Path(images_dir) / str(study_id) / str(r.series_id)
        if not directory.is_dir():
            warn(
                f"study {study_id}: series {r.series_id} ({r.series_description}) "
                f"not found at {directory}"
            )
            continue

        def skip(exc: DicomError) -> None:
            warn(f"study {study_id}: skipped {exc}")

        try:
            stacks = read_series(directory, on_error=skip if on_error == "skip" else None)
        except DicomError as exc:
            if on_error != "skip":
                raise
            warn(f"study {study_id}: series {r.series_id} unreadable ({exc})")
            continue
        for k, st in enumerate(stacks):
            vols.stacks.setdefault(r.series_description, []).append(
                (int(r.series_id), k, st, normalize_stack(st.pixels))
            )
    return vols


def largest(entries: list) -> tuple:
    return max(entries, key=lambda e: (e[2].pixels.shape[0], -e[0]))
