"""Localizer inputs: which points a series type holds, and samples cut from a stack.

Points per series type (from vocab.GROUPS):

- Sagittal T2/STIR: the spinal canal at the 5 levels (5 points);
- Sagittal T1: the left and right foramina at the 5 levels (10 points);
- Axial T2: the left and right subarticular recesses on one level's slice (2 points).
  The level's slice is not predicted: the sagittal level points are projected through the
  DICOM geometry onto the axial series (``inference.localize.project_to_axial``).

A sample is a few slices of a series (as channels, resized to ``image_px`` square) with the
geometry that maps points back. Coordinates: ``x`` is the pixel column and ``y`` the row,
pixel centres at integers, in the original slice (``orig``), the resized input (``in``) or
the heatmap (``hm``) grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from spinegrade.core import vocab
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.errors import ConfigError
from spinegrade.data.convert import load_stack
from spinegrade.data.crops import normalize_stack
from spinegrade.data.dicom import Stack
from spinegrade.data.geometry import pixel_to_world


@dataclass(frozen=True)
class PointSpec:
    """The points one series type's localizer finds.

    Attributes:
        series: series type slug (vocab.SERIES_SLUGS).
        conditions: the conditions graded on this series type.
        per_level: True for sagittal series (a point per condition and level, slice
            predicted); False for axial (a point per condition on a given level's slice).
    """

    series: str
    conditions: tuple[str, ...]
    per_level: bool

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(condition, level) per point, in output-channel order; level "" when axial."""
        if self.per_level:
            return [(c, lv) for c in self.conditions for lv in vocab.LEVELS]
        return [(c, "") for c in self.conditions]


def point_spec(series: str) -> PointSpec:
    """The PointSpec of series type slug ``series`` (e.g. ``sagittal_t2``)."""
    if series not in vocab.SERIES_FROM_SLUG:
        raise ConfigError(
            f"unknown series type {series!r}; expected one of {list(vocab.SERIES_FROM_SLUG)}"
        )
    series_type = vocab.SERIES_FROM_SLUG[series]
    conditions = tuple(
        c for g in vocab.GROUPS.values() if g.series_type == series_type for c in g.conditions
    )
    return PointSpec(series, conditions, per_level=series_type != vocab.AXIAL_T2)


def stack_depths(stack: Stack) -> np.ndarray:
    """(S,) position of each slice along the stack's normal, mm."""
    return stack.positions @ stack.normal


def input_slices(depths: np.ndarray, centre_mm: float, n: int, step_mm: float) -> np.ndarray:
    """(n,) indices of the slices nearest to ``centre_mm + (i - n//2) * step_mm``."""
    targets = centre_mm + (np.arange(n) - n // 2) * step_mm
    return np.abs(depths[None, :] - targets[:, None]).argmin(axis=1)


def resize_slices(pixels: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) float [0, 1] -> (n, size, size) float32 (bilinear, antialiased)."""
    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].numpy()


def to_input(xy: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Original pixel (x, y) (..., 2) -> the resized ``size`` x ``size`` input grid."""
    h, w = shape
    scale = np.array([size / w, size / h])
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5


def from_input(xy: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Inverse of to_input."""
    h, w = shape
    scale = np.array([w / size, h / size])
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5


@dataclass
class Sample:
    """One localizer input with its targets and the geometry to map points back.

    Attributes:
        image: (C, P, P) float32 in [0, 1], the input slices.
        points: (K, 2) labelled (x, y) in the original slice grid, NaN when absent.
        slices: (K,) labelled slice index in the stack, -1 when absent.
        centre: index of the input's centre slice; centre_mm its depth.
        depths: (S,) slice depths along the normal, mm.
        positions, orientation, spacing, shape: the stack's geometry.
    """

    study_id: int
    series_id: int
    stack: int
    level: str
    image: np.ndarray
    points: np.ndarray
    slices: np.ndarray
    centre: int
    centre_mm: float
    depths: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int]

    @property
    def offsets_mm(self) -> np.ndarray:
        """(K,) labelled depth minus centre depth, mm (NaN when absent)."""
        out = np.full(len(self.slices), np.nan)
        ok = self.slices >= 0
        out[ok] = self.depths[self.slices[ok]] - self.centre_mm
        return out

    def world(self, points: np.ndarray, slices: np.ndarray) -> np.ndarray:
        """(K, 3) world points of original-grid (x, y) on the given slices, mm."""
        return np.stack(
            [
                pixel_to_world(x, y, self.positions[s], self.orientation, self.spacing)
                for (x, y), s in zip(points, np.clip(slices, 0, None), strict=True)
            ]
        )


def make_sample(
    stack: Stack,
    normalized: np.ndarray,
    centre: int | None,
    inp: LocalizerInput,
    n_points: int,
) -> Sample:
    """A Sample without labels. ``centre`` None: the middle of the stack's extent (sagittal);
    else that slice (an axial level's slice)."""
    depths = stack_depths(stack)
    centre_mm = float((depths.min() + depths.max()) / 2 if centre is None else depths[centre])
    idx = input_slices(depths, centre_mm, inp.slices, inp.step_mm)
    return Sample(
        study_id=0,
        series_id=0,
        stack=0,
        level="",
        image=resize_slices(normalized[idx], inp.image_px),
        points=np.full((n_points, 2), np.nan),
        slices=np.full(n_points, -1, dtype=np.int64),
        centre=int(idx[len(idx) // 2]),
        centre_mm=centre_mm,
        depths=depths,
        positions=stack.positions,
        orientation=stack.orientation,
        spacing=stack.spacing,
        shape=(int(stack.pixels.shape[1]), int(stack.pixels.shape[2])),
    )


def build_samples(
    labels: pd.DataFrame,
    slices: pd.DataFrame,
    volumes_dir: str | Path,
    spec: PointSpec,
    inp: LocalizerInput,
) -> list[Sample]:
    """Training samples from labelled coordinates on converted volumes.

    Sagittal: one sample per (study, series, stack) holding every labelled point of the
    spec's conditions. Axial: one per (study, level, series, stack, slice) of the labelled
    subarticular points. Points on a series of another type are ignored.
    """
    series_type = vocab.SERIES_FROM_SLUG[spec.series]
    rows = labels[
        labels["condition"].isin(spec.conditions)
        & (labels["series_description"] == series_type)
        & labels["x"].notna()
    ].merge(
        slices[["series_id", "instance_number", "stack", "slice"]],
        on=["series_id", "instance_number"],
        how="inner",
        validate="many_to_one",
    )
    keys = {k: i for i, k in enumerate(spec.keys)}
    by = (
        ["study_id", "series_id", "stack"]
        if spec.per_level
        else ["study_id", "level", "series_id", "stack", "slice"]
    )
    rows = rows.astype({"study_id": "int64", "series_id": "int64", "stack": "int64"})
    samples: list[Sample] = []
    volumes_dir = Path(volumes_dir)
    for _, grp in tqdm(rows.groupby(by, sort=True), desc=f"samples {spec.series}", unit="sample"):
        study, series, stack_k = (int(grp[c].iloc[0]) for c in ("study_id", "series_id", "stack"))
        stack = load_stack(volumes_dir / str(study) / str(series), stack_k)
        centre = None if spec.per_level else int(grp["slice"].iloc[0])
        s = make_sample(stack, normalize_stack(stack.pixels), centre, inp, len(keys))
        s.study_id, s.series_id, s.stack = study, series, stack_k
        s.level = "" if spec.per_level else str(grp["level"].iloc[0])
        for r in grp.itertuples(index=False):
            i = keys[(r.condition, r.level if spec.per_level else "")]
            s.points[i] = [r.x, r.y]
            s.slices[i] = int(r.slice)
        samples.append(s)
    return samples
