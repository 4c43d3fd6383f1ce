"""The localizers' losses: spatial-softmax cross-entropy of the heatmaps and smooth-L1 of
the slice offsets, each averaged over the points a sample holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spinegrade.models.heatmap import OFFSET_SCALE_MM


def _masked_mean(err: torch.Tensor, mask: torch.Tensor, per_sample: bool) -> torch.Tensor:
    if per_sample:
        return (err * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def heatmap_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, per_sample: bool = False
) -> torch.Tensor:
    """Cross-entropy of each map's spatial softmax against its normalized target Gaussian,
    averaged over the points present (``mask`` (B, K) 1/0): over the batch, or per sample
    (B,) with ``per_sample``."""
    logp = logits.flatten(2).float().log_softmax(-1)
    t = target.flatten(2)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    ce = -(t * logp).sum(-1)
    return _masked_mean(ce, mask, per_sample)


def offset_loss(
    pred: torch.Tensor, target_mm: torch.Tensor, mask: torch.Tensor, per_sample: bool = False
) -> torch.Tensor:
    """Smooth-L1 of the slice offsets (in units of OFFSET_SCALE_MM) over present points."""
    err = F.smooth_l1_loss(pred.float(), target_mm / OFFSET_SCALE_MM, reduction="none")
    return _masked_mean(err, mask, per_sample)
