"""Training the heatmap localizers: one per series type, on labelled coordinates.

The network and its output codec live in ``models.heatmap``, the samples (slices as
channels, the points and the geometry to map them back) in ``models.points``; this module
holds the torch dataset with its targets, the training loop and the validation point errors.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import albumentations as A
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from spinegrade.core.config import LocalizerConfig
from spinegrade.core.runtime import device, seed_everything
from spinegrade.models.heatmap import (
    HeatmapNet,
    gaussian_heatmaps,
    point_errors,
    run_model,
    summarize_errors,
)
from spinegrade.models.points import PointSpec, Sample, to_input
from spinegrade.training.engine.augment import build_augmentation
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

    def __getitem__(self, i: int):
        s = self.samples[i]
        size = s.image.shape[-1]
        present = np.isfinite(s.points).all(axis=1)
        pts = to_input(np.nan_to_num(s.points), s.shape, size)
        image = s.image
        if self.augment is not None:
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


@dataclass
class LocalizerResult:
    """What training returns: best weights, per-epoch history, validation errors."""

    state: dict[str, torch.Tensor]
    history: pd.DataFrame
    errors: pd.DataFrame
    metrics: dict[str, float]
    meta: dict = field(default_factory=dict)


def train_localizer(
    samples: list[Sample],
    folds: pd.DataFrame,
    spec: PointSpec,
    cfg: LocalizerConfig,
    on_epoch: Callable[[dict], None] | None = None,
) -> LocalizerResult:
    """Train on every fold but ``cfg.val_fold``; keep the epoch with the lowest validation
    loss; report its point errors on the validation studies.

    Args:
        samples: build_samples output.
        folds: split-folds table (study_id, fold).
        spec: the series type's points.
        cfg: train-localizer params.
        on_epoch: called with each epoch's row of the history (for MLflow).
    """
    seed_everything(cfg.seed)
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
    dev = device()
    model = HeatmapNet(cfg.encoder, in_chans, len(spec.keys), cfg.decoder_channels).to(dev)
    aug = (
        build_augmentation(cfg.seed, translate=0.08, rotate=8.0, keypoints=True)
        if cfg.augment
        else None
    )
    train_ds = LocalizerDataset(train, model.stride, cfg.sigma_px, aug)
    val_ds = LocalizerDataset(val, model.stride, cfg.sigma_px)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=False
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = inp.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.1
    )
    use_offsets = 1.0 if spec.per_level else 0.0
    history, best, best_loss = [], None, float("inf")
    bar = tqdm(range(inp.epochs), desc=f"localizer {spec.series}", unit="epoch")
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for x, target, mask, offsets in loader:
            x, target, mask, offsets = (t.to(dev) for t in (x, target, mask, offsets))
            logits, pred_off = model(x)
            loss = heatmap_loss(logits, target, mask)
            loss = loss + use_offsets * offset_loss(pred_off, offsets, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(x)
            n += len(x)
        val_loss = evaluate_loss(model, val_ds, cfg.batch_size, use_offsets)
        pred = run_model(model, np.stack([s.image for s in val]), cfg.batch_size)
        summary = summarize_errors(point_errors(val, pred, spec, model.stride, cfg.sigma_px))
        row = {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss, **summary}
        history.append(row)
        bar.set_postfix(
            val_loss=f"{val_loss:.3f}", median_mm=f"{summary['point_error_mm_median']:.1f}"
        )
        if on_epoch is not None:
            on_epoch(row)
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    pred = run_model(model, np.stack([s.image for s in val]), cfg.batch_size)
    errors = point_errors(val, pred, spec, model.stride, cfg.sigma_px)
    best_epoch = int(np.argmin([r["val_loss"] for r in history]))
    metrics = {
        **summarize_errors(errors),
        "val_loss": best_loss,
        "best_epoch": best_epoch,
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
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return LocalizerResult(state, pd.DataFrame(history), errors, metrics, meta)


@torch.no_grad()
def evaluate_loss(
    model: HeatmapNet, dataset: LocalizerDataset, batch_size: int, use_offsets: float
) -> float:
    """Mean loss over ``dataset`` (no augmentation)."""
    dev = next(model.parameters()).device
    model.eval()
    total, n = 0.0, 0
    for x, target, mask, offsets in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        x, target, mask, offsets = (t.to(dev) for t in (x, target, mask, offsets))
        logits, pred_off = model(x)
        loss = heatmap_loss(logits, target, mask) + use_offsets * offset_loss(
            pred_off, offsets, mask
        )
        total += float(loss) * len(x)
        n += len(x)
    return total / max(n, 1)
