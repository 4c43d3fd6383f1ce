"""How one network is optimized: the per-backbone recipe of train-per-condition, which
the localizers' training also builds (the engine's optimizer and schedule read it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from spinegrade.core.config.base import Section


class Recipe(Section):
    """How one backbone is trained from scratch (per-backbone settings).

    Attributes:
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (linear warm-up, cosine decay) or ``onecycle``.
        warmup_epochs: length of the warm-up (fraction of epochs allowed).
        model_kwargs: extra timm arguments (e.g. ``window_size``, ``ls_init_value``).
        weights: a local checkpoint to start from (instead of random initialization).
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    model_kwargs: Mapping[str, Any] = Field(default_factory=dict)
    weights: str = ""
