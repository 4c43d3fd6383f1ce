"""Grading at prediction time: the model compare-backbones chose per group (a backbone, or
the ensemble of all of them), each fold model calibrated by its own temperature, applied to
crops cut exactly as crop-rois cuts them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.errors import DataError
from spinegrade.core.runtime import Runtime, device
from spinegrade.data.crops import crop_25d
from spinegrade.inference.studies import StudyVolumes
from spinegrade.models.backbones import create_backbone, input_normalization, predict_proba
from spinegrade.models.inputs import CropDataset
from spinegrade.scoring.calibration import apply_temperature

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One fold model of one backbone, with its temperature and input normalization."""

    backbone: str
    model: nn.Module
    temperature: float = 1.0
    mean: float | None = None
    std: float | None = None


@dataclass
class Grader:
    """One group's chosen model: its members' calibrated probabilities are averaged over the
    fold models of each backbone, then over the backbones (one backbone, or the ensemble)."""

    group: str
    backbone: str  # a timm name, or "ensemble"
    members: list[Member]
    rt: Runtime | None = None  # the members' device and autocast (None: the CPU in fp32)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, k, S, S) uint8 crops -> (N, 3) calibrated probabilities."""
        if not len(crops):
            return np.zeros((0, 3))
        per_backbone: dict[str, list[np.ndarray]] = {}
        labels = np.zeros(len(crops), dtype=np.int64)
        inputs: dict[tuple, CropDataset] = {}  # one per input normalization, not per member
        for m in self.members:
            if (m.mean, m.std) not in inputs:
                inputs[m.mean, m.std] = CropDataset(crops, labels, m.mean, m.std)
            ds = inputs[m.mean, m.std]
            p = apply_temperature(predict_proba(m.model, ds, 64, self.rt), m.temperature)
            per_backbone.setdefault(m.backbone, []).append(p)
        return np.mean([np.mean(ps, axis=0) for ps in per_backbone.values()], axis=0)


def select_backbones(
    selection: object, groups: list[str], source: str = "compare-backbones' choice"
) -> dict[str, str]:
    """Per group, the model (a backbone or ``ensemble``) to grade with, from either file
    compare-backbones writes: its choice (``{group: model}``,
    data/compare-backbones/choice.json) or its comparison report (keys ``{group}.{model}``,
    reports/compare-backbones.json: the model with the lowest out-of-fold rsna group term,
    which is the one the choice names).

    Raises:
        DataError: ``selection`` is neither, or names no model for one of ``groups``
            (the message names ``source``).
    """
    if not isinstance(selection, dict):
        selection = {}  # not a mapping: neither file
    if selection and all(isinstance(v, str) for v in selection.values()):
        missing = [g for g in groups if g not in selection]
        if missing:
            raise DataError(f"{source}: no model chosen for group {missing[0]!r}")
        return {g: selection[g] for g in groups}
    if not selection or not all(
        isinstance(v, dict) and "rsna_group_term" in v and "." in k for k, v in selection.items()
    ):
        raise DataError(
            f"{source}: neither compare-backbones' choice ({{group: model}}, "
            "data/compare-backbones/choice.json) nor its comparison report "
            "(reports/compare-backbones.json)"
        )
    out = {}
    for group in groups:
        scored = {
            key.split(".", 1)[1]: row["rsna_group_term"]
            for key, row in selection.items()
            if key.split(".", 1)[0] == group
        }
        if not scored:
            raise DataError(f"{source}: the comparison report has no model for group {group!r}")
        out[group] = min(sorted(scored), key=scored.get)
    return out


def load_graders(
    models_dir: str | Path,
    selection: dict[str, str],
    train: TrainPerConditionConfig,
    crop: CropConfig,
    dev: torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, Grader]:
    """Rebuild each selected model from ``{models}/{group}/{backbone}/fold*.safetensors``
    (``ensemble``: every trained backbone of the group) with each fold's temperature from
    its metrics.json, on ``dev`` (default: the CPU), to run under ``precision``'s autocast."""
    directories = {
        group: {
            b: Path(models_dir) / group / b
            for b in (list(train.backbones) if choice == vocab.ENSEMBLE else [choice])
        }
        for group, choice in selection.items()
    }
    return graders_from_directories(directories, selection, train, crop, dev, precision)


def graders_from_directories(
    directories: dict[str, dict[str, Path]],
    selection: dict[str, str],
    train: TrainPerConditionConfig,
    crop: CropConfig,
    dev: torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, Grader]:
    """Graders from group -> backbone -> a directory of ``fold*.safetensors`` and
    ``metrics.json`` (a training output, or a registered model version's files), on
    ``dev`` (default: the CPU) under ``precision``'s autocast: one Runtime for them all."""
    rt = Runtime(dev or device("cpu"), precision)
    graders = {}
    for group, dirs in directories.items():
        members = [m for b, d in dirs.items() for m in _members(Path(d), b, train, crop)]
        for m in members:
            m.model.to(rt.device)
        graders[group] = Grader(group, selection[group], members, rt)
        log.debug("%s: grading with %s (%d fold model(s))", group, selection[group], len(members))
    return graders


def _members(
    directory: Path, backbone: str, train: TrainPerConditionConfig, crop: CropConfig
) -> list[Member]:
    files = sorted(directory.glob("fold*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no trained weights (fold*.safetensors) in {directory}")
    metrics_path = directory / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: the fold models' temperatures are missing")
    folds = json.loads(metrics_path.read_text())["folds"]
    out = []
    for f in files:
        fold = f.name.removesuffix(".safetensors")
        if fold not in folds or "temperature" not in folds[fold]:
            raise DataError(f"{metrics_path}: no temperature for {fold} (retrain the model)")
        model = create_backbone(
            backbone, crop.slices, crop.size_px, train.recipe(backbone).model_kwargs
        )
        model.load_state_dict(load_file(str(f)))
        model.eval()
        mean, std = (
            input_normalization(model) if train.training.normalize == "model" else (None, None)
        )
        out.append(Member(backbone, model, float(folds[fold]["temperature"]), mean, std))
    return out


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
    graded = pd.DataFrame(proba, columns=list(vocab.SEVERITY_COLUMNS))
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
