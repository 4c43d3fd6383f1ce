"""Grading at prediction time: the backbone compare-backbones chose per group, its fold
models averaged, applied to crops cut exactly as crop-rois cuts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.config import CropConfig, TrainConfig
from spinegrade.core.errors import DataError
from spinegrade.core.runtime import device
from spinegrade.data.crops import crop_25d
from spinegrade.inference.studies import StudyVolumes
from spinegrade.models.backbones import create_backbone, input_normalization, predict_proba
from spinegrade.models.inputs import CropDataset

log = logging.getLogger(__name__)


@dataclass
class Grader:
    """One group's chosen backbone: its fold models (probabilities are averaged)."""

    group: str
    backbone: str
    models: list[nn.Module]
    mean: float | None
    std: float | None
    precision: str = "fp32"  # engine.precision: autocast of the models

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, k, S, S) uint8 crops -> (N, 3) probabilities."""
        if not len(crops):
            return np.zeros((0, 3))
        ds = CropDataset(crops, np.zeros(len(crops), dtype=np.int64), self.mean, self.std)
        return np.mean([predict_proba(m, ds, 64, self.precision) for m in self.models], axis=0)


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
    models_dir: str | Path,
    selection: dict[str, str],
    train: TrainConfig,
    crop: CropConfig,
    dev: torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, Grader]:
    """Rebuild each selected backbone from ``{models}/{group}/{backbone}/fold*.safetensors``
    on ``dev`` (default: the CPU), to run under ``precision``'s autocast."""
    dev = dev or device("cpu")
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
            models.append(model.to(dev).eval())
        mean, std = (None, None)
        if train.training.normalize == "model":
            mean, std = input_normalization(models[0])
        graders[group] = Grader(group, backbone, models, mean, std, precision)
        log.info("%s: grading with %s (%d fold model(s))", group, backbone, len(models))
    return graders


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
