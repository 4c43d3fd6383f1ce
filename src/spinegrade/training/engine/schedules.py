"""Learning-rate schedules, stepped once per optimizer step, from torch's schedulers."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from spinegrade.core.config.recipe import Recipe


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, epochs: int, steps_per_epoch: int
) -> lr_scheduler.LRScheduler:
    """Per-step schedule for ``recipe.schedule``.

    ``onecycle``: torch's OneCycleLR peaking at ``recipe.lr`` after the warm-up share (a
    single step in all falls back to the cosine schedule).
    ``cosine``: LinearLR from ``lr / (warm + 1)`` up to ``lr`` over the ``warm`` warm-up
    steps, then CosineAnnealingLR down to 0 at the last step.
    """
    total = max(1, epochs * steps_per_epoch)
    warm = min(total - 1, int(recipe.warmup_epochs * steps_per_epoch))
    if recipe.schedule == "onecycle" and total >= 2:
        # OneCycleLR divides by the length of each phase: on a tiny dataset (a step or two
        # per epoch) the warm-up must still span more than one step, or it divides by zero.
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=recipe.lr,
            total_steps=total,
            pct_start=max(warm / total, 0.01, 1.5 / total),
            anneal_strategy="cos",
        )
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    if warm == 0:
        return cosine
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm
    )
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warm])
