"""The heatmap network of the localizers, and its output codec.

After the MobileNetV2-UNet seed paper: a timm encoder created with ``features_only`` and a
light FPN-style decoder output one heatmap per point at the encoder's first stride. A second
head gives, per point, its offset along the slice normal from the input's centre slice in
mm, i.e. which slice the point lies on. Target heatmaps (Gaussians), decoding (local
soft-argmax) and the point errors of a decoded output are here too, so training and
inference read the network's output the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn

from spinegrade.core.errors import ConfigError
from spinegrade.models.points import PointSpec, Sample, from_input, to_input

OFFSET_SCALE_MM = 10.0  # the offset head predicts mm / OFFSET_SCALE_MM


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


@dataclass
class Prediction:
    """Raw localizer output for a batch of samples (numpy)."""

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


def point_error_stats(errors: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """Median and 90th percentile of ``error_mm`` and the share of ``slice_error == 0`` of a
    point-error table, as ``{prefix}error_mm_median``, ``{prefix}error_mm_p90`` and
    ``slice_exact`` (0.0 each for an empty table)."""
    empty = errors.empty
    return {
        f"{prefix}error_mm_median": 0.0 if empty else float(errors["error_mm"].median()),
        f"{prefix}error_mm_p90": 0.0 if empty else float(errors["error_mm"].quantile(0.9)),
        "slice_exact": 0.0 if empty else float((errors["slice_error"] == 0).mean()),
    }


def summarize_errors(errors: pd.DataFrame) -> dict[str, float]:
    """Median and 90th percentile point error (mm), mean Dice, share of exact slices."""
    if errors.empty:
        return {}
    stats = point_error_stats(errors, prefix="point_")
    return {  # key order is history.csv's column order
        "point_error_mm_median": stats["point_error_mm_median"],
        "point_error_mm_p90": stats["point_error_mm_p90"],
        "inplane_error_mm_median": float(errors["inplane_error_mm"].median()),
        "slice_exact": stats["slice_exact"],
        "heatmap_dice": float(errors["dice"].mean()),
    }
