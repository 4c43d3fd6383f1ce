"""The localizers' losses: spatial-softmax cross-entropy of the heatmaps and smooth-L1 of
the slice offsets, each averaged over the points a sample holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spinegrade.models.heatmap import OFFSET_SCALE_MM


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each map's spatial softmax against its normalized target Gaussian,
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
