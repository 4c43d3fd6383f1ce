"""What the review page shows of a predicted study, gathered while predict has it in memory.

Per study, predict calls :func:`study_pictures` while the study's images are read: the
slices the points were found on, windowed (each stack by its own 0.5/99.5 percentiles, as
``data.crops.normalize_stack`` does for the crops), with the geometry to draw any point on
them, and each graded row's crop and Grad-CAM. After the last study, :func:`review_data`
joins them with the submission, the points and (when known) the answers into the page's
``index`` and ``studies`` (``inference.page`` describes the format).

Only geometry comes from the DICOM headers: study ids are the competition's, and no name,
date, institution or UID reaches the page.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from spinegrade.core import vocab
from spinegrade.data.dicom import Stack
from spinegrade.data.geometry import orientation_labels, world_to_pixel
from spinegrade.inference.explain import Explanation, cam_overlay
from spinegrade.inference.localize import localization_errors
from spinegrade.inference.studies import StudyVolumes, largest
from spinegrade.scoring.bootstrap import rsna_study_sums, study_scores
from spinegrade.scoring.metrics import row_losses

VIEW_MAX_PX = 384  # a view's longest side on the page (real series are 512-1024 px)
THUMB_PX = 96  # the overview's thumbnail width
JPEG_QUALITY = 85

_SIDES = ("left", "right")


@dataclass
class View:
    """One slice of one stack as the page shows it, and how to draw world points on it."""

    id: str
    title: str
    where: tuple[int, int, int]  # series_id, stack, slice
    image: str  # data URI
    thumbnail: str  # data URI, THUMB_PX wide
    width: int
    height: int
    scale: float  # page pixels per stack pixel
    ipp: np.ndarray  # (3,) the slice's ImagePositionPatient, mm
    iop: np.ndarray  # (6,)
    spacing: np.ndarray  # (2,) row, column mm
    conditions: tuple[str, ...]  # whose points it shows
    levels: tuple[str, ...]

    def project(self, world: np.ndarray) -> tuple[float, float] | None:
        """Page pixel (x, y) of world point (3,) mm, or None outside the image."""
        x, y, _ = world_to_pixel(world, self.ipp, self.iop, self.spacing)
        px, py = (float(x) + 0.5) * self.scale, (float(y) + 0.5) * self.scale
        return (px, py) if 0 <= px <= self.width and 0 <= py <= self.height else None

    def page(self, points: list[dict]) -> dict:
        orientation = orientation_labels(self.iop)
        return {
            "id": self.id,
            "title": self.title,
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "orientation": orientation,
            "points": points,
        }


@dataclass
class StudyPictures:
    """A study's views, the series types read, its warnings, and each graded row's crop and
    Grad-CAM (row_id -> two data URIs)."""

    study_id: int
    series: list[str]
    views: list[View] = field(default_factory=list)
    crops: dict[str, tuple[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """``image`` encoded as a ``data:`` URI (PNG, or JPEG at ``JPEG_QUALITY``)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        image.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _slice_image(normalized: np.ndarray, max_px: int) -> tuple[Image.Image, float]:
    """A windowed slice ((H, W) in [0, 1]) as an 8-bit image whose longest side is at most
    ``max_px``, and its scale (image pixels per slice pixel)."""
    image = Image.fromarray(np.round(normalized * 255.0).astype(np.uint8))
    scale = min(1.0, max_px / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image, image.width / normalized.shape[1]


def _view(
    view_id: str,
    title: str,
    entry: tuple[int, int, Stack, np.ndarray],
    slice_i: int,
    conditions: Sequence[str],
    levels: Sequence[str],
) -> View:
    series_id, stack, st, norm = entry
    slice_i = int(np.clip(slice_i, 0, len(norm) - 1))
    image, scale = _slice_image(norm[slice_i], VIEW_MAX_PX)
    return View(
        view_id,
        f"{title}, series {series_id}, slice {slice_i + 1} of {len(norm)}",
        (int(series_id), int(stack), slice_i),
        data_uri(image, "JPEG"),
        data_uri(_thumb(image), "JPEG"),
        image.width,
        image.height,
        scale,
        np.asarray(st.positions[slice_i], dtype=np.float64),
        np.asarray(st.orientation, dtype=np.float64),
        np.asarray(st.spacing, dtype=np.float64),
        tuple(conditions),
        tuple(levels),
    )


def _entry(vols: StudyVolumes, series_type: str, rows: pd.DataFrame):
    """The stack ``rows``' points lie on (the first), else the type's largest stack."""
    entries = vols.series(series_type)
    if not entries:
        return None
    for sid, k, st, norm in entries:
        if len(rows) and (int(rows["series_id"].iloc[0]), int(rows["stack"].iloc[0])) == (sid, k):
            return sid, k, st, norm
    return largest(entries)


def _slice_of(rows: pd.DataFrame, entry) -> int | None:
    """The median slice of ``rows``' points on ``entry``'s stack (None if none is on it)."""
    sid, k, _, _ = entry
    on = rows[(rows["series_id"] == sid) & (rows["stack"] == k)] if len(rows) else rows
    return int(np.median(on["slice"])) if len(on) else None


def study_pictures(
    vols: StudyVolumes,
    found: pd.DataFrame,
    labelled: pd.DataFrame | None,
    explanations: Sequence[Explanation],
    warnings: Sequence[str] = (),
) -> StudyPictures:
    """The views of one study, and its rows' crops and Grad-CAMs.

    Views: the Sagittal T2/STIR slice of the spinal points, a Sagittal T1 slice per side for
    the foraminal points, and per level the Axial T2 slice of its subarticular points; each
    on the slice where the points were found (else labelled, else the stack's middle).

    Args:
        vols: the study's stacks (read_study).
        found, labelled: its points (POINT_COLUMNS) found by the localizers and, when known,
            at the labelled coordinates.
        explanations: its graded rows' crops and Grad-CAMs (explain.explain_rows).
        warnings: what predict warned about this study.
    """
    labelled = labelled if labelled is not None else found.iloc[0:0]
    both = pd.concat([found, labelled], ignore_index=True)
    out = StudyPictures(vols.study_id, [t for t in vocab.SERIES_TYPES if vols.series(t)])
    out.warnings = list(warnings)

    def add(view_id: str, title: str, series_type: str, conditions, levels) -> None:
        mine = both[both["condition"].isin(conditions) & both["level"].isin(levels)]
        found_here = mine[mine["source"] == "localizer"]
        ranked = pd.concat([found_here, mine[mine["source"] != "localizer"]])
        entry = _entry(vols, series_type, ranked)
        if entry is None or (series_type == vocab.AXIAL_T2 and not len(ranked)):
            return
        slice_i = _slice_of(found_here, entry)
        slice_i = _slice_of(ranked, entry) if slice_i is None else slice_i
        slice_i = len(entry[3]) // 2 if slice_i is None else slice_i
        out.views.append(_view(view_id, title, entry, slice_i, conditions, levels))

    spinal, foraminal, subarticular = (vocab.GROUPS[g].conditions for g in vocab.GROUPS)
    add("sagittal_t2", vocab.SAGITTAL_T2, vocab.SAGITTAL_T2, spinal, vocab.LEVELS)
    for side, condition in zip(_SIDES, foraminal, strict=True):
        add(
            f"sagittal_t1_{side}",
            f"{vocab.SAGITTAL_T1} ({side} foramina)",
            vocab.SAGITTAL_T1,
            (condition,),
            vocab.LEVELS,
        )
    for level in vocab.LEVELS:
        add(
            f"axial_t2_{level}",
            f"{vocab.AXIAL_T2} at {vocab.LEVEL_NAMES[level]}",
            vocab.AXIAL_T2,
            subarticular,
            (level,),
        )
    for e in explanations:
        crop = Image.fromarray(e.image)
        out.crops[e.row_id] = (data_uri(crop), data_uri(cam_overlay(e.image, e.cam), "JPEG"))
    return out


def _side(condition: str) -> str:
    return next((s for s in _SIDES if condition.startswith(s)), "")


def _distances(found: pd.DataFrame, labelled: pd.DataFrame) -> dict[str, float]:
    """row_id -> mm between the found and the labelled point of each row that has both."""
    e = localization_errors(found, labelled)
    return {
        vocab.row_id(s, c, lv): float(v)
        for s, c, lv, v in zip(
            e["study_id"], e["condition"], e["level"], e["error_mm"], strict=True
        )
    }


def _points(view: View, table: pd.DataFrame, kind: str, distance: dict[str, float]) -> list[dict]:
    out = []
    mine = table[table["condition"].isin(view.conditions) & table["level"].isin(view.levels)]
    for r in mine.itertuples(index=False):
        xy = view.project(np.array([r.wx, r.wy, r.wz], dtype=np.float64))
        if xy is None:
            continue
        rid = vocab.row_id(r.study_id, r.condition, r.level)
        side = _side(r.condition) if view.id.startswith("axial") else ""
        out.append(
            {
                "label": f"{vocab.LEVEL_NAMES[r.level]} {side}".strip(),
                "row_id": rid,
                "kind": kind,
                "x": round(xy[0], 2),
                "y": round(xy[1], 2),
                "distance_mm": distance.get(rid),
            }
        )
    return out


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def review_data(
    pictures: Sequence[StudyPictures],
    submission: pd.DataFrame,
    found: pd.DataFrame,
    labelled: pd.DataFrame | None = None,
    solution: pd.DataFrame | None = None,
    models: dict[str, str] | None = None,
    summary: dict[str, str] | None = None,
) -> tuple[dict, list[dict]]:
    """The review page's ``index`` and ``studies`` (inference.page), worst study first.

    Args:
        pictures: per study, what study_pictures gathered.
        submission: predict's submission (25 rows a study).
        found: the points the localizers found (POINT_COLUMNS).
        labelled: the points at the labelled coordinates, when known.
        solution: the answers (scoring.metrics solution rows), when known: then each row
            shows its truth and its weighted log loss, and each study its rsna score.
        models: the model grading each group.
        summary: label -> text lines for the page header.
    """
    has_answers = solution is not None
    labelled = labelled if labelled is not None else found.iloc[0:0]
    distance = _distances(found, labelled)
    losses = row_losses(solution, submission) if has_answers else None
    scores = pd.DataFrame()
    if has_answers:
        scored = [p.study_id for p in pictures if (solution["study_id"] == p.study_id).any()]
        scores = study_scores(rsna_study_sums(solution, submission, scored))
    proba = submission.set_index("row_id")[list(vocab.SEVERITY_COLUMNS)]
    index_rows, details = [], []
    for pic in pictures:
        sid = pic.study_id
        views = [
            v.page(
                _points(v, found[found["study_id"] == sid], "found", distance)
                + _points(v, labelled[labelled["study_id"] == sid], "labelled", distance)
            )
            for v in pic.views
        ]
        view_of = {p["row_id"]: v["id"] for v in views for p in v["points"] if p["kind"] == "found"}
        for v in views:
            for p in v["points"]:
                view_of.setdefault(p["row_id"], v["id"])
        rows = []
        for condition in vocab.CONDITIONS:
            group = vocab.GROUP_OF_CONDITION[condition]
            for level in vocab.LEVELS:
                rid = vocab.row_id(sid, condition, level)
                p = proba.loc[rid].to_numpy(dtype=float)
                crop, cam = pic.crops.get(rid, (None, None))
                truth = loss = weight = None
                if losses is not None and rid in losses.index:
                    truth = vocab.SEVERITIES[int(losses.at[rid, "target"])]
                    loss, weight = float(losses.at[rid, "wnll"]), float(losses.at[rid, "weight"])
                rows.append(
                    {
                        "row_id": rid,
                        "condition": vocab.CONDITION_NAMES[condition],
                        "level": vocab.LEVEL_NAMES[level],
                        "group": group,
                        "probabilities": [round(float(x), 4) for x in p],
                        "predicted": vocab.SEVERITIES[int(np.argmax(p))],
                        "truth": truth,
                        "loss": loss,
                        "weight": weight,
                        "prior": rid not in pic.crops,
                        "crop": crop,
                        "cam": cam,
                        "distance_mm": distance.get(rid),
                        "view": view_of.get(rid),
                    }
                )
        study_loss, group_loss = None, None
        if sid in scores.index:
            study_loss = _finite(scores.at[sid, "score"])
            group_loss = {g: _finite(scores.at[sid, g]) for g in vocab.GROUPS}
        mine = [d for r in rows if (d := r["distance_mm"]) is not None]
        first = next((v for v in pic.views if v.id == "sagittal_t2"), None) or next(
            iter(pic.views), None
        )
        index_rows.append(
            {
                "study_id": sid,
                "series": pic.series,
                "missing_series": [t for t in vocab.SERIES_TYPES if t not in pic.series],
                "graded": sum(not r["prior"] for r in rows),
                "prior": sum(r["prior"] for r in rows),
                "warnings": pic.warnings,
                "severe_groups": sorted(
                    {r["group"] for r in rows if r["predicted"] == vocab.SEVERITIES[2]},
                    key=list(vocab.GROUPS).index,
                ),
                "loss": study_loss,
                "group_loss": group_loss,
                "point_error_mm": float(np.mean(mine)) if mine else None,
                "thumbnail": first.thumbnail if first else None,
            }
        )
        details.append({"study_id": sid, "warnings": pic.warnings, "views": views, "rows": rows})
    index = {
        "title": f"spinegrade review: {len(pictures)} studies",
        "has_answers": has_answers,
        "models": dict(models or {}),
        "severities": list(vocab.SEVERITIES),
        "groups": list(vocab.GROUPS),
        "summary": dict(summary or {}),
        "studies": index_rows,
    }
    return index, details


def _thumb(image: Image.Image) -> Image.Image:
    height = max(1, round(image.height * THUMB_PX / image.width))
    return image.resize((THUMB_PX, height), Image.Resampling.LANCZOS)
