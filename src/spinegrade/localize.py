"""Localisation: find the points a grader crops around, in a study without coordinates.

One heatmap model per series type, after the MobileNetV2-UNet seed paper: a timm encoder
created with ``features_only`` and a light FPN-style decoder read a few slices of a series
(as channels, resized to ``image_px`` square) and output one heatmap per point at the
encoder's first stride. A second head gives, per point, its offset along the slice normal
from the input's centre slice in mm, i.e. which slice the point lies on.

Points per series type (from vocab.GROUPS):

- Sagittal T2/STIR: the spinal canal at the 5 levels (5 points);
- Sagittal T1: the left and right foramina at the 5 levels (10 points);
- Axial T2: the left and right subarticular recesses on one level's slice (2 points).
  The level's slice is not predicted: the sagittal level points are projected through the
  DICOM geometry onto the axial series (project_to_axial).

Coordinates: ``x`` is the pixel column and ``y`` the row, pixel centres at integers, in
the original slice (``orig``), the resized input (``in``) or the heatmap (``hm``) grid.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from spinegrade import vocab
from spinegrade.config import LocalizerConfig, LocalizerInput
from spinegrade.convert import load_stack
from spinegrade.crops import normalise_stack
from spinegrade.dicom import Stack
from spinegrade.errors import ConfigError
from spinegrade.geometry import pixel_to_world, world_to_pixel
from spinegrade.train import device, seed_everything

log = logging.getLogger(__name__)

OFFSET_SCALE_MM = 10.0  # the offset head predicts mm / OFFSET_SCALE_MM


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class PointSpec:
    """The points one series type's localiser finds.

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


# --------------------------------------------------------------------------- heatmaps


def gaussian_heatmaps(points: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """(K, h, w) float32 Gaussians of peak 1 at ``points`` (K, 2) heatmap (x, y); a
    point that is NaN gives an all-zero map."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((len(points), h, w), dtype=np.float32)
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float32)):
        if np.isfinite(x) and np.isfinite(y):
            out[k] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return out


def decode_heatmaps(prob: np.ndarray, window: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (K, h, w) of non-negative scores -> ((K, 2) sub-pixel (x, y), (K,) peak).

    The peak is the arg-max; the point is the score-weighted mean of the square of half-side
    ``window`` around it (a local soft-argmax), shrunk equally on both sides near an edge so
    it stays centred on the peak: a symmetric blob gives its centre to a fraction of a pixel.
    """
    prob = np.asarray(prob, dtype=np.float64)
    k, h, w = prob.shape
    points = np.zeros((k, 2))
    peaks = np.zeros(k)
    for i in range(k):
        y0, x0 = (int(v) for v in np.unravel_index(int(np.argmax(prob[i])), (h, w)))
        ry = min(window, y0, h - 1 - y0)
        rx = min(window, x0, w - 1 - x0)
        patch = prob[i, y0 - ry : y0 + ry + 1, x0 - rx : x0 + rx + 1]
        gy, gx = np.mgrid[y0 - ry : y0 + ry + 1, x0 - rx : x0 + rx + 1]
        total = patch.sum()
        if total > 0:
            points[i] = [(gx * patch).sum() / total, (gy * patch).sum() / total]
        else:
            points[i] = [x0, y0]
        peaks[i] = prob[i, y0, x0]
    return points, peaks


def heatmap_dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(K,) soft Dice ``2 sum(p t) / (sum p^2 + sum t^2)`` of heatmaps (K, h, w), each scaled
    to peak 1 first (1 = the same blob, 0 = no overlap)."""
    p = pred / np.maximum(pred.max(axis=(1, 2), keepdims=True), 1e-12)
    t = target / np.maximum(target.max(axis=(1, 2), keepdims=True), 1e-12)
    den = (p * p).sum(axis=(1, 2)) + (t * t).sum(axis=(1, 2))
    return 2 * (p * t).sum(axis=(1, 2)) / np.maximum(den, 1e-12)


# ------------------------------------------------------------------------------ model


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeatmapNet(nn.Module):
    """timm encoder (``features_only``) + FPN-style decoder -> heatmaps and offsets.

    forward: (B, C, P, P) -> (heatmap logits (B, K, P/s, P/s), offsets (B, K)), where
    ``s = self.stride`` is the encoder's first reduction.
    """

    def __init__(self, encoder: str, in_chans: int, n_points: int, channels: int = 32) -> None:
        super().__init__()
        if not timm.is_model(encoder):
            raise ConfigError(f"unknown timm encoder {encoder!r} (see timm.list_models())")
        self.encoder = timm.create_model(
            encoder, features_only=True, pretrained=False, in_chans=in_chans
        )
        chans = self.encoder.feature_info.channels()
        self.stride = int(self.encoder.feature_info.reduction()[0])
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in chans)
        self.fuse = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in chans[:-1])
        self.heatmap = nn.Conv2d(channels, n_points, 1)
        self.offset = nn.Linear(chans[-1], n_points)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            y = F.interpolate(y, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse[i](y + self.lateral[i](feats[i]))
        return self.heatmap(y), self.offset(feats[-1].mean(dim=(2, 3)))


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each map's spatial softmax against its normalised target Gaussian,
    averaged over the points present (``mask`` (B, K) 1/0)."""
    logp = logits.flatten(2).float().log_softmax(-1)
    t = target.flatten(2)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    ce = -(t * logp).sum(-1)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0)


def offset_loss(pred: torch.Tensor, target_mm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 of the slice offsets (in units of OFFSET_SCALE_MM) over present points."""
    err = F.smooth_l1_loss(pred.float(), target_mm / OFFSET_SCALE_MM, reduction="none")
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One localiser input with its targets and the geometry to map points back.

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
    normalised: np.ndarray,
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
        image=resize_slices(normalised[idx], inp.image_px),
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
        s = make_sample(stack, normalise_stack(stack.pixels), centre, inp, len(keys))
        s.study_id, s.series_id, s.stack = study, series, stack_k
        s.level = "" if spec.per_level else str(grp["level"].iloc[0])
        for r in grp.itertuples(index=False):
            i = keys[(r.condition, r.level if spec.per_level else "")]
            s.points[i] = [r.x, r.y]
            s.slices[i] = int(r.slice)
        samples.append(s)
    return samples


# --------------------------------------------------------------------------- training


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


def build_augmentation(seed: int) -> A.Compose:
    """Small affine jitter and contrast changes that move the keypoints with the image."""
    return A.Compose(
        [
            A.Affine(translate_percent=(-0.08, 0.08), scale=(0.9, 1.1), rotate=(-8, 8), p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=seed,
    )


@dataclass
class Prediction:
    """Raw localiser output for a batch of samples (numpy)."""

    heatmaps: np.ndarray  # (N, K, h, w) spatial softmax probabilities
    offsets_mm: np.ndarray  # (N, K)


@torch.no_grad()
def run_model(model: HeatmapNet, images: np.ndarray, batch_size: int = 16) -> Prediction:
    """Heatmap probabilities and slice offsets of ``images`` (N, C, P, P)."""
    dev = next(model.parameters()).device
    model.eval()
    heat, off = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(dev)
        logits, offsets = model(x)
        b, k, h, w = logits.shape
        heat.append(logits.float().flatten(2).softmax(-1).reshape(b, k, h, w).cpu().numpy())
        off.append(offsets.float().cpu().numpy() * OFFSET_SCALE_MM)
    return Prediction(np.concatenate(heat), np.concatenate(off))


def locate_points(
    sample: Sample, heatmaps: np.ndarray, offsets_mm: np.ndarray, stride: int, per_level: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one sample's output -> ((K, 2) original-grid (x, y), (K,) slice, (K,) peak).

    Sagittal points take the slice nearest to ``centre_mm + offset``; axial points stay on
    the centre slice (the level's slice).
    """
    hm_xy, peak = decode_heatmaps(heatmaps)
    in_xy = (hm_xy + 0.5) * stride - 0.5
    xy = from_input(in_xy, sample.shape, sample.image.shape[-1])
    if per_level:
        depth = sample.centre_mm + offsets_mm
        slices = np.abs(sample.depths[None, :] - depth[:, None]).argmin(axis=1)
    else:
        slices = np.full(len(xy), sample.centre, dtype=np.int64)
    return xy, slices, peak


def point_errors(
    samples: list[Sample], pred: Prediction, spec: PointSpec, stride: int, sigma: float
) -> pd.DataFrame:
    """Per labelled point: in-plane and 3D error in mm, slice error, heatmap Dice."""
    rows = []
    for s, heat, off in zip(samples, pred.heatmaps, pred.offsets_mm, strict=True):
        xy, sl, _ = locate_points(s, heat, off, stride, spec.per_level)
        present = s.slices >= 0
        size = s.image.shape[-1]
        true_hm = (to_input(np.nan_to_num(s.points), s.shape, size) + 0.5) / stride - 0.5
        true_hm[~present] = np.nan
        target = gaussian_heatmaps(true_hm, heat.shape[-2:], sigma)
        dice = heatmap_dice(heat, target)
        got = s.world(xy, sl)
        true = s.world(np.nan_to_num(s.points), s.slices)
        same_slice = s.world(xy, s.slices)
        for i in np.flatnonzero(present):
            condition, level = spec.keys[i]
            rows.append(
                {
                    "study_id": s.study_id,
                    "series_id": s.series_id,
                    "condition": condition,
                    "level": level or s.level,
                    "error_mm": float(np.linalg.norm(got[i] - true[i])),
                    "inplane_error_mm": float(np.linalg.norm(same_slice[i] - true[i])),
                    "slice_error": int(abs(sl[i] - s.slices[i])),
                    "dice": float(dice[i]),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "study_id",
            "series_id",
            "condition",
            "level",
            "error_mm",
            "inplane_error_mm",
            "slice_error",
            "dice",
        ],
    )


def summarise_errors(errors: pd.DataFrame) -> dict[str, float]:
    """Median and 90th percentile point error (mm), mean Dice, share of exact slices."""
    if errors.empty:
        return {}
    return {
        "point_error_mm_median": float(errors["error_mm"].median()),
        "point_error_mm_p90": float(errors["error_mm"].quantile(0.9)),
        "inplane_error_mm_median": float(errors["inplane_error_mm"].median()),
        "slice_exact": float((errors["slice_error"] == 0).mean()),
        "heatmap_dice": float(errors["dice"].mean()),
    }


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
    aug = build_augmentation(cfg.seed) if cfg.augment else None
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
        summary = summarise_errors(point_errors(val, pred, spec, model.stride, cfg.sigma_px))
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
        **summarise_errors(errors),
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
        "input": dataclasses.asdict(inp),
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


# ------------------------------------------------------------------------- prediction


@dataclass
class Localizer:
    """A trained localiser, ready to find points in a stack."""

    model: HeatmapNet
    spec: PointSpec
    inp: LocalizerInput

    @classmethod
    def load(cls, directory: str | Path) -> Localizer:
        """Load ``localizer.json`` + ``weights.safetensors`` written by train-localizer."""
        directory = Path(directory)
        meta_path = directory / "localizer.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no trained localiser at {directory} (missing localizer.json)")
        meta = json.loads(meta_path.read_text())
        spec = point_spec(meta["series"])
        model = HeatmapNet(
            meta["encoder"], meta["in_chans"], meta["n_points"], meta["decoder_channels"]
        )
        model.load_state_dict(load_file(str(directory / "weights.safetensors")))
        model.to(device()).eval()
        return cls(model, spec, LocalizerInput(**meta["input"]))

    def locate(
        self, stack: Stack, normalised: np.ndarray, centres: Iterable[int | None] = (None,)
    ) -> list[pd.DataFrame]:
        """Points in ``stack`` (normalised pixels (S, H, W) in [0, 1]), one table per centre.

        Args:
            centres: None for a sagittal stack (centred on its middle); for axial, the
                level slices to look at.

        Returns:
            Per centre, a table (condition, level, slice, x, y, peak) in the stack's
            original pixel grid; level is "" for axial points.
        """
        samples = [
            make_sample(stack, normalised, c, self.inp, len(self.spec.keys)) for c in centres
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

    For each candidate slice, ``d = dot(normal, point - IPP)`` (rsna-data.md); the slice
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
