"""The graders' losses: torch's cross-entropy (weighted or plain), a class-weighted focal
loss (which torch does not have), and the metric's group term used for validation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.config.train_per_condition import TrainingConfig
from spinegrade.scoring.metrics import weighted_log_loss


class FocalLoss(nn.Module):
    """Class-weighted focal loss (gamma = 0 is weighted cross-entropy)."""

    def __init__(self, weight: torch.Tensor, gamma: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        w = self.weight[target]
        return (-w * (1 - logp.exp()) ** self.gamma * logp).sum() / w.sum()


def make_loss(cfg: TrainingConfig) -> nn.Module:
    """The training loss named by ``cfg.loss``: ``weighted_ce`` (cross-entropy with
    ``cfg.class_weights``, a weighted mean as the metric's group terms), ``focal`` (weighted,
    ``cfg.focal_gamma``) or ``ce``."""
    weight = torch.tensor(cfg.class_weights, dtype=torch.float32)
    if cfg.loss == "focal":
        return FocalLoss(weight, cfg.focal_gamma)
    if cfg.loss == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight)
    return nn.CrossEntropyLoss()


def metric_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """The official per-group term of (N, 3) probabilities: log loss weighted 1/2/4."""
    return weighted_log_loss(labels, proba, np.asarray(vocab.SEVERITY_WEIGHTS)[labels])
