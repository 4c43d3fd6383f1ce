"""predict: grade studies that have no coordinates: localise, crop, grade, submit.

Per study: read each listed series (DICOM, sorted into stacks as convert-dicom does),
find the level points with the per-series-type localisers (axial level slices by
projecting the sagittal level points through the geometry), cut the same 2.5D crops as
crop-rois around them, grade them with the backbone compare-backbones chose per group,
and write the sample_submission format: 25 rows per study, study by study, conditions
and levels in vocab order, probabilities summing to 1. A row that cannot be graded (a
series type missing or unreadable, a level no axial slice reaches) gets its column's
class prior from the training labels, with a warning naming the study.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from spinegrade import vocab
from spinegrade.config import CropConfig, TrainConfig
from spinegrade.crops import crop_25d, normalise_stack
from spinegrade.dicom import Stack, read_series
from spinegrade.errors import DataError, DicomError
from spinegrade.evaluate import solution_from_labels
from spinegrade.geometry import pixel_to_world
from spinegrade.localize import Localizer, project_to_axial
from spinegrade.metrics import class_prior_submission
from spinegrade.models import create_backbone, input_normalisation
from spinegrade.train import CropDataset, device
from spinegrade.train import predict as predict_proba

log = logging.getLogger(__name__)

PROBA = list(vocab.SEVERITY_COLUMNS)
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


# ----------------------------------------------------------------------------- graders


@dataclass
class Grader:
    """One group's chosen backbone: its fold models (probabilities are averaged)."""

    group: str
    backbone: str
    models: list[nn.Module]
    mean: float | None
    std: float | None

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, k, S, S) uint8 crops -> (N, 3) probabilities."""
        if not len(crops):
            return np.zeros((0, 3))
        ds = CropDataset(crops, np.zeros(len(crops), dtype=np.int64), self.mean, self.std)
        return np.mean([predict_proba(m, ds, 64) for m in self.models], axis=0)


def select_backbones(comparison: dict, groups: list[str]) -> dict[str, str]:
    """Per group, the backbone with the lowest rsna group term in compare-backbones.json
    (keys ``{group}.{backbone}``)."""
    out = {}
    for group in groups:
        scored = {
            key.split(".", 1)[1]: row["rsna_group_term"]
            for key, row in comparison.items()
            if key.split(".", 1)[0] == group
        }
        if not scored:
            raise DataError(f"compare-backbones report has no backbone for group {group!r}")
        out[group] = min(sorted(scored), key=scored.get)
    return out


def load_graders(
    models_dir: str | Path, selection: dict[str, str], train: TrainConfig, crop: CropConfig
) -> dict[str, Grader]:
    """Rebuild each selected backbone from ``{models}/{group}/{backbone}/fold*.safetensors``."""
    graders = {}
    for group, backbone in selection.items():
        directory = Path(models_dir) / group / backbone
        files = sorted(directory.glob("fold*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no trained weights (fold*.safetensors) in {directory}")
        models = []
        for f in files:
            model = create_backbone(
                backbone, crop.slices, crop.size_px, train.recipe(backbone).model_kwargs
            )
            model.load_state_dict(load_file(str(f)))
            models.append(model.to(device()).eval())
        mean, std = (None, None)
        if train.training.normalize == "model":
            mean, std = input_normalisation(models[0])
        graders[group] = Grader(group, backbone, models, mean, std)
        log.info("%s: grading with %s (%d fold model(s))", group, backbone, len(models))
    return graders


@dataclass
class Bundle:
    """Everything predict needs besides the images."""

    graders: dict[str, Grader]
    localizers: dict[str, Localizer]
    prior_solution: pd.DataFrame
    crop: CropConfig
    selection: dict[str, str]


def load_bundle(
    models_dir: str | Path,
    localizers_dir: str | Path,
    comparison_path: str | Path,
    labels_path: str | Path,
    train: TrainConfig,
    crop: CropConfig,
) -> Bundle:
    """Graders chosen by compare-backbones, the three localisers, and the class prior.

    Args:
        models_dir: train-per-condition outputs ({group}/{backbone}/).
        localizers_dir: train-localizer outputs ({series type}/).
        comparison_path: compare-backbones.json.
        labels_path: ingest's labels.csv (training labels: the class prior).
        train: train-per-condition params the graders were trained with (recipes).
        crop: crop-rois params their crops were cut with.
    """
    comparison_path = Path(comparison_path)
    if not comparison_path.is_file():
        raise FileNotFoundError(
            f"{comparison_path}: no compare-backbones report (run `dvc repro` first)"
        )
    selection = select_backbones(json.loads(comparison_path.read_text()), list(vocab.GROUPS))
    graders = load_graders(models_dir, selection, train, crop)
    localizers = {
        slug: Localizer.load(Path(localizers_dir) / slug) for slug in vocab.SERIES_FROM_SLUG
    }
    labels_path = Path(labels_path)
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: training label table not found (for the prior)")
    prior = solution_from_labels(pd.read_csv(labels_path))
    return Bundle(graders, localizers, prior, crop, selection)


# ------------------------------------------------------------------------------ studies


@dataclass
class StudyVolumes:
    """A study's readable stacks by series type: (series_id, stack index, Stack, normalised)."""

    study_id: int
    stacks: dict[str, list[tuple[int, int, Stack, np.ndarray]]] = field(default_factory=dict)

    def series(self, series_type: str) -> list[tuple[int, int, Stack, np.ndarray]]:
        return self.stacks.get(series_type, [])

    def find(self, series_id: int, stack: int) -> tuple[Stack, np.ndarray]:
        for sid, k, st, norm in (s for v in self.stacks.values() for s in v):
            if sid == series_id and k == stack:
                return st, norm
        raise KeyError((series_id, stack))


def read_series_table(path: str | Path) -> pd.DataFrame:
    """A test_series_descriptions-style CSV; DataError names the file and the bad row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: series CSV not found")
    table = pd.read_csv(path, dtype={"series_description": str})
    if list(table.columns) != list(vocab.SERIES_CSV_HEADER):
        raise DataError(
            f"{path}: wrong header {list(table.columns)}; expected {list(vocab.SERIES_CSV_HEADER)}"
        )
    for i, r in enumerate(table.itertuples(index=False), start=2):
        if r.series_description not in vocab.SERIES_TYPES:
            raise DataError(
                f"{path}, line {i}: unknown series_description {r.series_description!r}; "
                f"expected one of {list(vocab.SERIES_TYPES)}"
            )
    return table.astype({"study_id": "int64", "series_id": "int64"})


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
                (int(r.series_id), k, st, normalise_stack(st.pixels))
            )
    return vols


def _largest(entries: list) -> tuple:
    return max(entries, key=lambda e: (e[2].pixels.shape[0], -e[0]))


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


def localise_study(
    vols: StudyVolumes, localizers: dict[str, Localizer], warn: Callable[[str], None]
) -> pd.DataFrame:
    """The study's points (POINT_COLUMNS) found by the localisers."""
    found: list[pd.DataFrame] = []
    for series_type in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1):
        entries = vols.series(series_type)
        if not entries:
            warn(
                f"study {vols.study_id}: no readable {series_type} series; "
                "its conditions get the class prior"
            )
            continue
        sid, k, st, norm = _largest(entries)
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


def crop_points(vols: StudyVolumes, points: pd.DataFrame, crop: CropConfig) -> np.ndarray:
    """(N, k, S, S) uint8 crops around ``points``, cut exactly as crop-rois cuts them."""
    out = np.zeros((len(points), crop.slices, crop.size_px, crop.size_px), dtype=np.uint8)
    for i, r in enumerate(points.itertuples(index=False)):
        st, norm = vols.find(int(r.series_id), int(r.stack))
        c, _, _ = crop_25d(
            norm,
            int(r.slice),
            float(r.x),
            float(r.y),
            (float(st.spacing[0]), float(st.spacing[1])),
            crop.size_mm[vocab.GROUP_OF_CONDITION[r.condition]],
            crop.size_px,
            crop.slices,
        )
        out[i] = np.round(c * 255.0).astype(np.uint8)
    return out


def grade_points(
    vols: StudyVolumes, points: pd.DataFrame, graders: dict[str, Grader], crop: CropConfig
) -> tuple[pd.DataFrame, np.ndarray]:
    """Probabilities (row_id + severity columns) of each point, and the crops graded."""
    points = points.reset_index(drop=True)
    crops = crop_points(vols, points, crop)
    proba = np.zeros((len(points), 3))
    groups = points["condition"].map(vocab.GROUP_OF_CONDITION)
    for group, grader in graders.items():
        sel = np.flatnonzero(groups == group)
        if len(sel):
            proba[sel] = grader.predict(crops[sel])
    graded = pd.DataFrame(proba, columns=PROBA)
    graded.insert(
        0,
        "row_id",
        [
            vocab.row_id(s, c, lv)
            for s, c, lv in zip(
                points["study_id"], points["condition"], points["level"], strict=True
            )
        ],
    )
    return graded, crops


def submission_rows(
    study_ids: list[int], graded: pd.DataFrame, prior: pd.DataFrame
) -> pd.DataFrame:
    """25 rows per study in sample_submission order; ungraded rows take ``prior``'s row."""
    ids = [
        vocab.row_id(s, c, lv) for s in study_ids for c in vocab.CONDITIONS for lv in vocab.LEVELS
    ]
    table = prior.set_index("row_id")[PROBA].reindex(ids)
    g = graded.drop_duplicates("row_id", keep="first").set_index("row_id")[PROBA]
    g = g[g.index.isin(ids)]
    table.loc[g.index] = g.to_numpy()
    table = table.div(table.sum(axis=1), axis=0)
    return table.reset_index(names="row_id")


# ------------------------------------------------------------------------------ explain


def grad_cam(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM of class ``target`` for one input (1, k, S, S): (S, S) in [0, 1].

    Uses timm's forward_features / forward_head split: the last feature map is weighted by
    its spatially averaged gradient. Channels-last feature maps (``output_fmt`` NHWC, as
    Swin's) are moved to channels-first first.
    """
    model.eval()
    channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
    with torch.no_grad():
        feats = model.forward_features(x)
    if channels_last:
        feats = feats.permute(0, 3, 1, 2)
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(feats.permute(0, 2, 3, 1) if channels_last else feats)
        (grad,) = torch.autograd.grad(logits[0, target], feats)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam, size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    cam = cam[0, 0].detach().cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def write_explanations(
    out_dir: str | Path,
    graded: pd.DataFrame,
    crops: np.ndarray,
    points: pd.DataFrame,
    graders: dict[str, Grader],
) -> list[Path]:
    """One PNG per graded row: the crop's centre slice with its Grad-CAM overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spinegrade.io import atomic_path

    written = []
    points = points.reset_index(drop=True)
    for i, row in graded.iterrows():
        condition = points.loc[i, "condition"]
        grader = graders.get(vocab.GROUP_OF_CONDITION[condition])
        if grader is None:
            continue
        ds = CropDataset(crops[i : i + 1], np.zeros(1, dtype=np.int64), grader.mean, grader.std)
        x = ds[0][0][None].to(device())
        proba = row[PROBA].to_numpy(dtype=float)
        target = int(np.argmax(proba))
        cam = grad_cam(grader.models[0], x, target)
        image = crops[i, crops.shape[1] // 2]
        fig, (left, right) = plt.subplots(1, 2, figsize=(5.2, 2.9))
        for ax in (left, right):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.axis("off")
        right.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
        left.set_title("crop (centre slice)", fontsize=7)
        right.set_title("Grad-CAM", fontsize=7)
        fig.suptitle(
            f"{row['row_id']}: "
            f"{vocab.SEVERITIES[target]} p={proba[target]:.2f} ({grader.backbone})",
            fontsize=7,
        )
        fig.tight_layout()
        path = Path(out_dir) / str(points.loc[i, "study_id"]) / f"{row['row_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------------- run


@dataclass
class PredictResult:
    """A submission (25 rows per study), the points graded, and the warnings given.

    ``at_labels`` holds the same graders' result at the labelled coordinates, when they
    were given (the same studies, read once)."""

    submission: pd.DataFrame
    points: pd.DataFrame
    warnings: list[str]
    at_labels: PredictResult | None = None


def predict_studies(
    images_dir: str | Path,
    series: pd.DataFrame,
    bundle: Bundle,
    coordinates: pd.DataFrame | None = None,
    on_error: str = "skip",
    explain_dir: str | Path | None = None,
) -> PredictResult:
    """Grade every study of ``series`` (a test_series_descriptions table) at the points
    the localisers find.

    Args:
        images_dir: ``test_images``-style tree: {study}/{series}/{instance}.dcm.
        series: study_id, series_id, series_description rows.
        bundle: graders, localisers, class prior and crop geometry (load_bundle).
        coordinates: labelled coordinates (train_label_coordinates format): also grade
            at them, into ``at_labels`` (to measure what localisation costs).
        on_error: ``skip`` a corrupt file with a warning naming it, or ``raise``.
        explain_dir: write a Grad-CAM PNG per graded (localised) row under it.
    """
    study_ids = list(dict.fromkeys(series["study_id"].astype("int64").tolist()))
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning("%s", message)

    found: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {"localised": [], "labels": []}
    for study in tqdm(study_ids, desc="predict", unit="study"):
        vols = read_study(images_dir, study, series[series["study_id"] == study], on_error, warn)
        points = {"localised": localise_study(vols, bundle.localizers, warn)}
        if coordinates is not None:
            mine = coordinates[coordinates["study_id"] == study]
            points["labels"] = points_from_coordinates(vols, mine)
        for key, pts in points.items():
            if not len(pts):
                continue
            graded, crops = grade_points(vols, pts, bundle.graders, bundle.crop)
            if explain_dir is not None and key == "localised":
                write_explanations(explain_dir, graded, crops, pts, bundle.graders)
            found[key].append((graded, pts))
    prior = class_prior_submission(bundle.prior_solution, study_ids)

    def result(key: str) -> PredictResult:
        graded = pd.concat([g for g, _ in found[key]] or [pd.DataFrame(columns=["row_id", *PROBA])])
        points = pd.concat([p for _, p in found[key]] or [pd.DataFrame(columns=POINT_COLUMNS)])
        submission = submission_rows(study_ids, graded, prior)
        n_prior = len(submission) - int(submission["row_id"].isin(graded["row_id"]).sum())
        if n_prior:
            log.info("%s: %d of %d rows took the class prior", key, n_prior, len(submission))
        return PredictResult(submission, points.reset_index(drop=True), warnings)

    out = result("localised")
    if coordinates is not None:
        out.at_labels = result("labels")
    return out


def localisation_errors(found: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
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


def summarise_localisation(errors: pd.DataFrame) -> dict:
    """Median and 90th percentile point error (mm), and the share of points found on the
    labelled series and slice, overall and per group."""

    def stats(e: pd.DataFrame) -> dict:
        return {
            "points": len(e),
            "error_mm_median": float(e["error_mm"].median()) if len(e) else 0.0,
            "error_mm_p90": float(e["error_mm"].quantile(0.9)) if len(e) else 0.0,
            "slice_exact": float((e["slice_error"] == 0).mean()) if len(e) else 0.0,
        }

    return {"all": stats(errors), **{g: stats(errors[errors["group"] == g]) for g in vocab.GROUPS}}
