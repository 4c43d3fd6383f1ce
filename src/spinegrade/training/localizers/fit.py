"""Training the heatmap localizers: one per series type, on labelled coordinates.

The network and its output codec live in ``models.heatmap``, the samples (slices as
channels, the points and the geometry to map them back) in ``models.points``; this module
holds the torch dataset with its targets, the localizers' part of the engine's training loop
(``LocalizerTask``) and the validation point errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch import nn

from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_localizer import LocalizerConfig
from spinegrade.core.runtime import Runtime, device, seed_everything
from spinegrade.models.heatmap import (
    OFFSET_SCALE_MM,
    HeatmapNet,
    Prediction,
    gaussian_heatmaps,
    point_errors,
    summarize_errors,
)
from spinegrade.models.inputs import seeded_item
from spinegrade.models.points import PointSpec, Sample, to_input
from spinegrade.training.engine.augment import build_augmentation
from spinegrade.training.engine.loop import Batch, LoopSettings, fit
from spinegrade.training.localizers.losses import heatmap_loss, offset_loss

log = logging.getLogger(__name__)


class LocalizerDataset(torch.utils.data.Dataset):
    """Samples as (image (C, P, P), target heatmaps (K, h, w), mask (K,), offsets (K,) mm)."""

    def __init__(
        self, samples: list[Sample], stride: int, sigma: float, augment: A.Compose | None = None
    ) -> None:
        self.samples, self.stride, self.sigma, self.augment = samples, stride, sigma, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = seeded_item(key)
        s = self.samples[i]
        size = s.image.shape[-1]
        present = np.isfinite(s.points).all(axis=1)
        pts = to_input(np.nan_to_num(s.points), s.shape, size)
        image = s.image
        if self.augment is not None:
            if seed is not None:
                self.augment.set_random_seed(seed)
            out = self.augment(image=np.ascontiguousarray(image.transpose(1, 2, 0)), keypoints=pts)
            image = out["image"].transpose(2, 0, 1)
            pts = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
        hm = size // self.stride
        pts_hm = (pts + 0.5) / self.stride - 0.5
        pts_hm[~present] = np.nan
        target = gaussian_heatmaps(pts_hm, (hm, hm), self.sigma)
        offsets = np.nan_to_num(s.offsets_mm)
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(target),
            torch.from_numpy(present.astype(np.float32)),
            torch.from_numpy(offsets.astype(np.float32)),
        )


class LocalizerTask:
    """The localizers' part of the training loop: heatmap cross-entropy plus (for per-level
    sagittal points) the slice-offset loss; validation by loss and point error in mm."""

    def __init__(self, val: list[Sample], spec: PointSpec, stride: int, sigma: float) -> None:
        self.val, self.spec, self.stride, self.sigma = val, spec, stride, sigma
        self.use_offsets = 1.0 if spec.per_level else 0.0

    def _loss(self, model: nn.Module, batch: Batch, per_sample: bool):
        x, target, mask, offsets = batch
        logits, pred_off = model(x)
        loss = heatmap_loss(logits, target, mask, per_sample) + self.use_offsets * offset_loss(
            pred_off, offsets, mask, per_sample
        )
        return loss, logits, pred_off

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._loss(model, batch, per_sample=False)[0]

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        loss, logits, offsets = self._loss(model, batch, per_sample=True)
        b, k, h, w = logits.shape
        heat = logits.float().flatten(2).softmax(-1).reshape(b, k, h, w)
        return {
            "loss": loss.double().cpu().numpy(),
            "heatmaps": heat.cpu().numpy(),
            "offsets_mm": offsets.float().cpu().numpy() * OFFSET_SCALE_MM,
        }

    def errors(self, outputs: dict[str, np.ndarray]) -> pd.DataFrame:
        pred = Prediction(outputs["heatmaps"], outputs["offsets_mm"])
        return point_errors(self.val, pred, self.spec, self.stride, self.sigma)

    def score(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {
            "val_loss": float(np.mean(outputs["loss"])),
            **summarize_errors(self.errors(outputs)),
        }


@dataclass
class LocalizerResult:
    """What training returns: best weights, per-epoch history, validation errors."""

    state: dict[str, torch.Tensor]
    history: pd.DataFrame
    errors: pd.DataFrame
    metrics: dict[str, float]
    meta: dict = field(default_factory=dict)
    seconds: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # images/s, peak memory (MB)


def train_localizer(
    samples: list[Sample],
    folds: pd.DataFrame,
    spec: PointSpec,
    cfg: LocalizerConfig,
    on_epoch: Callable[[int, dict], None] | None = None,
    rt: Runtime | None = None,
) -> LocalizerResult:
    """Train on every fold but ``cfg.val_fold``; keep the epoch with the lowest validation
    loss (stopping after ``cfg.patience`` epochs without one); report its point errors on
    the validation studies.

    Args:
        samples: build_samples output.
        folds: split-folds table (study_id, fold).
        spec: the series type's points.
        cfg: train-localizer params.
        on_epoch: called with (epoch, the epoch's history row and throughput) for MLflow.
        rt: device, precision and processes (default: one process on the CPU, fp32).
    """
    rt = rt or Runtime(device("cpu"))
    seed_everything(cfg.seed, rt.deterministic)
    fold_of = dict(zip(folds["study_id"], folds["fold"], strict=True))
    missing = sorted({s.study_id for s in samples} - set(fold_of))
    if missing:
        raise ValueError(f"studies without a fold in the folds table: {missing[:5]}")
    train = [s for s in samples if fold_of[s.study_id] != cfg.val_fold]
    val = [s for s in samples if fold_of[s.study_id] == cfg.val_fold]
    if not train or not val:
        raise ValueError(
            f"{spec.series}: need samples in and out of fold {cfg.val_fold} "
            f"(got {len(train)} train, {len(val)} validation)"
        )
    inp = cfg.input_for(spec.series)
    in_chans = train[0].image.shape[0]
    model = HeatmapNet(cfg.encoder, in_chans, len(spec.keys), cfg.decoder_channels)
    aug = (
        build_augmentation(cfg.seed, translate=0.08, rotate=8.0, keypoints=True)
        if cfg.augment
        else None
    )
    train_ds = LocalizerDataset(train, model.stride, cfg.sigma_px, aug)
    val_ds = LocalizerDataset(val, model.stride, cfg.sigma_px)
    # one-cycle with a tenth of the epochs as warm-up
    recipe = Recipe(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        schedule="onecycle",
        warmup_epochs=0.1 * inp.epochs,
    )
    settings = LoopSettings(
        epochs=inp.epochs,
        patience=cfg.patience,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        desc=f"localizer {spec.series}",
        eval_batch_size=cfg.batch_size,
        oom_hint=f"train-localizer.batch_size or train-localizer.inputs.{spec.series}.image_px",
    )
    task = LocalizerTask(val, spec, model.stride, cfg.sigma_px)
    res = fit(model, train_ds, val_ds, task, recipe, settings, rt, on_epoch)
    errors = task.errors(res.outputs)
    best = next(row for row in res.history if row["epoch"] == res.best_epoch)
    metrics = {
        **summarize_errors(errors),
        "val_loss": best["val_loss"],
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "train_samples": len(train),
        "val_samples": len(val),
    }
    meta = {
        "series": spec.series,
        "encoder": cfg.encoder,
        "in_chans": in_chans,
        "n_points": len(spec.keys),
        "keys": [list(k) for k in spec.keys],
        "decoder_channels": cfg.decoder_channels,
        "stride": model.stride,
        "sigma_px": cfg.sigma_px,
        "input": inp.model_dump(),
    }
    return LocalizerResult(
        res.state, pd.DataFrame(res.history), errors, metrics, meta, res.seconds, res.speed
    )
