"""Localization at prediction time: find the points a grader crops around, in a study
without coordinates.

Sagittal T2/STIR and Sagittal T1 points come from their localizers; the axial level slices
are not predicted: each level's sagittal point is projected through the DICOM geometry onto
the study's axial stacks (``project_to_axial``), and the axial localizer finds the two
subarticular points on that slice. ``points_from_coordinates`` and ``localization_errors``
set labelled points beside the found ones, in mm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from spinegrade.core import vocab
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.runtime import device
from spinegrade.data.dicom import Stack
from spinegrade.data.geometry import pixel_to_world, world_to_pixel
from spinegrade.inference.studies import StudyVolumes, largest
from spinegrade.models.heatmap import HeatmapNet, locate_points, run_model
from spinegrade.models.points import PointSpec, make_sample, point_spec


@dataclass
class Localizer:
    """A trained localizer, ready to find points in a stack."""

    model: HeatmapNet
    spec: PointSpec
    inp: LocalizerInput

    @classmethod
    def load(cls, directory: str | Path, dev: torch.device | None = None) -> Localizer:
        """Load ``localizer.json`` + ``weights.safetensors`` written by train-localizer, on
        ``dev`` (default: the CPU)."""
        directory = Path(directory)
        meta_path = directory / "localizer.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no trained localizer at {directory} (missing localizer.json)")
        meta = json.loads(meta_path.read_text())
        spec = point_spec(meta["series"])
        model = HeatmapNet(
            meta["encoder"], meta["in_chans"], meta["n_points"], meta["decoder_channels"]
        )
        model.load_state_dict(load_file(str(directory / "weights.safetensors")))
        model.to(dev or device("cpu")).eval()
        return cls(model, spec, LocalizerInput(**meta["input"]))

    def locate(
        self, stack: Stack, normalized: np.ndarray, centres: Iterable[int | None] = (None,)
    ) -> list[pd.DataFrame]:
        """Points in ``stack`` (normalized pixels (S, H, W) in [0, 1]), one table per centre.

        Args:
            centres: None for a sagittal stack (centred on its middle); for axial, the
                level slices to look at.

        Returns:
            Per centre, a table (condition, level, slice, x, y, peak) in the stack's
            original pixel grid; level is "" for axial points.
        """
        samples = [
            make_sample(stack, normalized, c, self.inp, len(self.spec.keys)) for c in centres
        ]
        pred = run_model(self.model, np.stack([s.image for s in samples]))
        out = []
        for s, heat, off in zip(samples, pred.heatmaps, pred.offsets_mm, strict=True):
            xy, sl, peak = locate_points(s, heat, off, self.model.stride, self.spec.per_level)
            out.append(
                pd.DataFrame(
                    {
                        "condition": [c for c, _ in self.spec.keys],
                        "level": [lv for _, lv in self.spec.keys],
                        "slice": sl,
                        "x": xy[:, 0],
                        "y": xy[:, 1],
                        "peak": peak,
                    }
                )
            )
        return out


def project_to_axial(
    point: np.ndarray, stacks: list[tuple[int, int, Stack]], max_mm: float
) -> tuple[int, int, int, float] | None:
    """The axial slice a sagittal level point falls on, through the DICOM geometry.

    For each candidate slice, ``d = dot(normal, point - IPP)`` (docs/rsna-data.md); the slice
    with the smallest ``|d|`` whose image contains the projected point wins.

    Args:
        point: (3,) world point, mm.
        stacks: (series_id, stack index, Stack) of every axial stack of the study.
        max_mm: farthest acceptable plane distance.

    Returns:
        (series_id, stack, slice, |d| mm), or None when no slice is within ``max_mm``.
    """
    best = None
    for series_id, k, st in stacks:
        h, w = st.pixels.shape[1:]
        for i, ipp in enumerate(st.positions):
            x, y, d = world_to_pixel(point, ipp, st.orientation, st.spacing)
            if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
                continue
            if abs(d) <= max_mm and (best is None or abs(d) < best[3]):
                best = (series_id, k, i, float(abs(d)))
    return best


POINT_COLUMNS = [
    "study_id",
    "condition",
    "level",
    "series_id",
    "stack",
    "slice",
    "x",
    "y",
    "wx",
    "wy",
    "wz",
    "source",
]

# Farthest an axial slice may lie from a projected level point and still show the level.
MAX_AXIAL_MM = 10.0


def _with_world(df: pd.DataFrame, study: int, series: int, k: int, st: Stack, source: str):
    world = (
        np.stack(
            [
                pixel_to_world(x, y, st.positions[s], st.orientation, st.spacing)
                for x, y, s in zip(df["x"], df["y"], df["slice"], strict=True)
            ]
        )
        if len(df)
        else np.zeros((0, 3))
    )
    return df.assign(
        study_id=study,
        series_id=series,
        stack=k,
        wx=world[:, 0],
        wy=world[:, 1],
        wz=world[:, 2],
        source=source,
    )[POINT_COLUMNS]


def localize_study(
    vols: StudyVolumes, localizers: dict[str, Localizer], warn: Callable[[str], None]
) -> pd.DataFrame:
    """The study's points (POINT_COLUMNS) found by the localizers."""
    found: list[pd.DataFrame] = []
    for series_type in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1):
        entries = vols.series(series_type)
        if not entries:
            warn(
                f"study {vols.study_id}: no readable {series_type} series; "
                "its conditions get the class prior"
            )
            continue
        sid, k, st, norm = largest(entries)
        (df,) = localizers[vocab.SERIES_SLUGS[series_type]].locate(st, norm)
        found.append(_with_world(df, vols.study_id, sid, k, st, "localizer"))
    axial = vols.series(vocab.AXIAL_T2)
    sagittal = pd.concat(found) if found else pd.DataFrame(columns=POINT_COLUMNS)
    level_points = _level_points(sagittal)
    if not axial:
        warn(
            f"study {vols.study_id}: no readable {vocab.AXIAL_T2} series; "
            "subarticular rows get the class prior"
        )
    elif not level_points:
        warn(
            f"study {vols.study_id}: no sagittal level points to project onto "
            f"{vocab.AXIAL_T2}; subarticular rows get the class prior"
        )
    else:
        stacks = [(sid, k, st) for sid, k, st, _ in axial]
        loc = localizers[vocab.SERIES_SLUGS[vocab.AXIAL_T2]]
        for level, point in level_points.items():
            hit = project_to_axial(point, stacks, MAX_AXIAL_MM)
            if hit is None:
                warn(
                    f"study {vols.study_id}: no {vocab.AXIAL_T2} slice within {MAX_AXIAL_MM} mm "
                    f"of level {vocab.LEVEL_NAMES[level]}; its subarticular rows take the prior"
                )
                continue
            sid, k, slice_i, _ = hit
            st, norm = vols.find(sid, k)
            (df,) = loc.locate(st, norm, centres=[slice_i])
            found.append(
                _with_world(df.assign(level=level), vols.study_id, sid, k, st, "localizer")
            )
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=POINT_COLUMNS)


def _level_points(sagittal: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per level, a world point in the canal: the spinal point, else the mean of the two
    foramina (when the study has no Sagittal T2)."""
    out = {}
    for level in vocab.LEVELS:
        rows = sagittal[sagittal["level"] == level]
        spinal = rows[rows["condition"] == vocab.CONDITIONS[0]]
        use = spinal if len(spinal) else rows
        if len(use):
            out[level] = use[["wx", "wy", "wz"]].to_numpy(dtype=float).mean(axis=0)
    return out


def points_from_coordinates(vols: StudyVolumes, coords: pd.DataFrame) -> pd.DataFrame:
    """The study's labelled points (train_label_coordinates format) as POINT_COLUMNS."""
    found = []
    for r in coords.itertuples(index=False):
        for sid, k, st, _ in (s for v in vols.stacks.values() for s in v):
            hits = np.flatnonzero(st.instance_numbers == int(r.instance_number))
            if sid == int(r.series_id) and len(hits):
                df = pd.DataFrame(
                    {
                        "condition": [vocab.CONDITION_FROM_NAME[r.condition]],
                        "level": [vocab.LEVEL_FROM_NAME[r.level]],
                        "slice": [int(hits[0])],
                        "x": [float(r.x)],
                        "y": [float(r.y)],
                    }
                )
                found.append(_with_world(df, vols.study_id, sid, k, st, "labels"))
                break
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=POINT_COLUMNS)


def localization_errors(found: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    """Per labelled point that was also found: 3D distance in mm between the two."""
    keys = ["study_id", "condition", "level"]
    both = found.merge(labelled, on=keys, suffixes=("", "_true"))
    d = np.linalg.norm(
        both[["wx", "wy", "wz"]].to_numpy(float)
        - both[["wx_true", "wy_true", "wz_true"]].to_numpy(float),
        axis=1,
    )
    return both[keys].assign(
        group=both["condition"].map(vocab.GROUP_OF_CONDITION),
        error_mm=d,
        same_series=both["series_id"] == both["series_id_true"],
        slice_error=np.where(
            both["series_id"] == both["series_id_true"],
            (both["slice"] - both["slice_true"]).abs(),
            -1,
        ),
    )
