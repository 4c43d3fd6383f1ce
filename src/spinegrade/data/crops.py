"""crop-rois: 2.5D crops of k slices around each labelled point, sized in millimetres.

Per condition group the output is one ``(N, k, size_px, size_px) uint8`` array plus an index
table whose row i describes crop i (study, condition, level, side, severity, source slice).
Intensities are scaled per stack (0.5th..99.5th percentile -> 0..255), so a crop keeps the
contrast of its series. Points near an edge are padded with zeros, never dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from spinegrade.core import vocab

if TYPE_CHECKING:  # an annotation only: the localizers import this module, not the section
    from spinegrade.core.config.crop_rois import CropConfig

log = logging.getLogger(__name__)

INDEX_COLUMNS = (
    "study_id",
    "condition",
    "level",
    "side",
    "severity",
    "label",
    "series_id",
    "instance_number",
    "stack",
    "slice",
    "x",
    "y",
    "padded_slices",
    "padded_inplane",
)


def normalize_stack(pixels: np.ndarray) -> np.ndarray:
    """(S, H, W) any dtype -> float32 in [0, 1] by the stack's 0.5/99.5 percentiles."""
    lo, hi = np.percentile(pixels, [0.5, 99.5]).astype(np.float32)
    scale = (hi - lo) if hi > lo else np.float32(1.0)
    return np.clip((pixels.astype(np.float32) - lo) / scale, 0.0, 1.0, dtype=np.float32)


def crop_25d(
    volume: np.ndarray,
    center_slice: int,
    x: float,
    y: float,
    spacing: tuple[float, float],
    size_mm: float,
    size_px: int,
    k: int,
) -> tuple[np.ndarray, int, bool]:
    """Crop k slices around ``center_slice``, ``size_mm`` square around pixel (x, y).

    Args:
        volume: (S, H, W) float image stack.
        center_slice: index of the labelled slice in ``volume``.
        x, y: pixel column and row of the point in that slice.
        spacing: PixelSpacing (row, col) in mm.
        size_mm: side of the crop in mm; size_px: side of the output in pixels.
        k: number of slices (odd), centred on ``center_slice``.

    Returns:
        (crop (k, size_px, size_px) float32, slices padded, whether the window left the image).
        Slices beyond the stack and pixels beyond the image are zero.
    """
    s, h, w = volume.shape
    offsets = ((np.arange(size_px) + 0.5) / size_px - 0.5) * size_mm
    rows = y + offsets / spacing[0]
    cols = x + offsets / spacing[1]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = np.zeros((k, size_px, size_px), dtype=np.float32)
    padded = 0
    for j, idx in enumerate(range(center_slice - k // 2, center_slice + k // 2 + 1)):
        if not 0 <= idx < s:
            padded += 1
            continue
        out[j] = map_coordinates(volume[idx], [rr, cc], order=1, mode="constant", cval=0.0)
    inplane = bool(rows[0] < 0 or cols[0] < 0 or rows[-1] > h - 1 or cols[-1] > w - 1)
    return out, padded, inplane


@dataclass
class GroupCrops:
    """One group's crops and index table."""

    crops: np.ndarray  # (N, k, size_px, size_px) uint8
    index: pd.DataFrame


def build_crops(
    labels: pd.DataFrame, slices: pd.DataFrame, volumes_dir: str | Path, cfg: CropConfig
) -> tuple[dict[str, GroupCrops], dict]:
    """Crop every labelled point that has coordinates, per condition group.

    Args:
        labels: ingest's long label table.
        slices: convert-dicom's slices.csv.
        volumes_dir: convert-dicom's output directory.
        cfg: crop geometry.

    Returns:
        ({group: GroupCrops}, report). Rows whose slice was not converted are dropped and
        counted in the report.
    """
    volumes_dir = Path(volumes_dir)
    located = labels.dropna(subset=["series_id", "instance_number"]).merge(
        slices[["series_id", "instance_number", "stack", "slice", "row_spacing", "col_spacing"]],
        on=["series_id", "instance_number"],
        how="left",
        validate="many_to_one",
    )
    missing = located["stack"].isna()
    report: dict = {"groups": {}, "dropped_no_volume": int(missing.sum())}
    for r in located[missing].itertuples(index=False):
        log.warning(
            "no converted slice for %s (series %s instance %s); not cropped",
            vocab.row_id(r.study_id, r.condition, r.level),
            r.series_id,
            r.instance_number,
        )
    located = located[~missing].astype({"stack": "int64", "slice": "int64"})
    cache: dict[tuple[int, int, int], np.ndarray] = {}

    def volume(study: int, series: int, stack: int) -> np.ndarray:
        key = (study, series, stack)
        if key not in cache:
            cache.clear()  # rows are sorted by series: keep one stack in memory
            cache[key] = normalize_stack(
                np.load(volumes_dir / str(study) / str(series) / f"stack{stack}.npy")
            )
        return cache[key]

    out: dict[str, GroupCrops] = {}
    for name, group in vocab.GROUPS.items():
        rows = located[located["condition"].isin(group.conditions)]
        rows = rows.sort_values(
            ["study_id", "series_id", "stack", "condition", "level"], kind="stable"
        )
        crops = np.zeros((len(rows), cfg.slices, cfg.size_px, cfg.size_px), dtype=np.uint8)
        index = []
        for i, r in enumerate(rows.itertuples(index=False)):
            vol = volume(int(r.study_id), int(r.series_id), int(r.stack))
            crop, padded, inplane = crop_25d(
                vol,
                int(r.slice),
                r.x,
                r.y,
                (r.row_spacing, r.col_spacing),
                cfg.size_mm[name],
                cfg.size_px,
                cfg.slices,
            )
            crops[i] = np.round(crop * 255.0).astype(np.uint8)
            index.append(
                {
                    "study_id": int(r.study_id),
                    "condition": r.condition,
                    "level": r.level,
                    "side": vocab.side_of(r.condition),
                    "severity": r.severity,
                    "label": vocab.SEVERITY_INDEX[r.severity],
                    "series_id": int(r.series_id),
                    "instance_number": int(r.instance_number),
                    "stack": int(r.stack),
                    "slice": int(r.slice),
                    "x": r.x,
                    "y": r.y,
                    "padded_slices": padded,
                    "padded_inplane": inplane,
                }
            )
        idx = pd.DataFrame(index, columns=list(INDEX_COLUMNS))
        out[name] = GroupCrops(crops, idx)
        report["groups"][name] = {
            "crops": len(idx),
            **{col: int((idx["label"] == i).sum()) for i, col in enumerate(vocab.SEVERITY_COLUMNS)},
            "padded_slices": int((idx["padded_slices"] > 0).sum()),
            "padded_inplane": int(idx["padded_inplane"].sum()),
        }
    report["shape"] = {
        "slices": cfg.slices,
        "size_px": cfg.size_px,
        "size_mm": json.loads(json.dumps(dict(cfg.size_mm))),
    }
    return out, report
