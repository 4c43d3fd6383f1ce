"""The ``train-per-condition`` section: the graders' matrix, shared settings and recipes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Self

from pydantic import Field, ValidationInfo, model_validator

from spinegrade.core.config.base import PARAMS_FILE, FromList, Section
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.errors import ConfigError
from spinegrade.core.vocab import GROUPS


class TrainingConfig(Section):
    """Settings shared by every (group, backbone) training job."""

    folds: FromList[tuple[int, ...]] = (0,)
    epochs: int = 8
    patience: int = 3
    batch_size: int = 64
    loss: Literal["weighted_ce", "focal", "ce"] = "weighted_ce"
    class_weights: FromList[tuple[float, float, float]] = (1.0, 2.0, 4.0)
    focal_gamma: float = 2.0
    oversample: bool = False
    augment: bool = True
    normalize: Literal["crop", "model"] = "crop"
    pretrained: bool = False
    seed: int = 42
    log_model: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.folds:
            raise ConfigError("train-per-condition.training.folds must name at least one fold")
        twice = sorted({f for f in self.folds if self.folds.count(f) > 1})
        if twice:
            raise ConfigError(f"train-per-condition.training.folds names fold(s) {twice} twice")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError(
                "train-per-condition.training: epochs, batch_size and patience must be >= 1"
            )
        return self


class TrainPerConditionConfig(Section):
    """train-per-condition: the matrix (groups x backbones), shared settings, recipes.

    Attributes:
        groups: condition groups to train (the DVC matrix's first axis).
        backbones: timm names to train per group (the matrix's second axis).
        training: settings shared by every job.
        recipes: per-backbone settings, with no defaults: a params file that has this
            section needs one for every listed backbone (else a ConfigError at load time),
            and :meth:`recipe` raises ConfigError for a backbone without one.
    """

    key: ClassVar[str] = "train-per-condition"

    groups: FromList[tuple[str, ...]] = tuple(GROUPS)
    backbones: FromList[tuple[str, ...]] = (
        "resnet50",
        "convnext_tiny",
        "swin_tiny_patch4_window7_224",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    recipes: Mapping[str, Recipe] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ConfigError(f"train-per-condition.groups: unknown group(s) {unknown}")
        # Only for a params file: code and tests build TrainConfigs with partial recipes,
        # and recipe() still refuses a backbone without one.
        if info.context and info.context.get(PARAMS_FILE):
            missing = [b for b in self.backbones if b not in self.recipes]
            if missing:
                raise ConfigError(
                    f"train-per-condition.recipes: no recipe for backbone(s) {missing} "
                    "listed in train-per-condition.backbones"
                )
        return self

    def recipe(self, backbone: str) -> Recipe:
        """The backbone's recipe.

        Raises:
            ConfigError: ``recipes`` has no entry for ``backbone`` (there is no default).
        """
        try:
            return self.recipes[backbone]
        except KeyError:
            raise ConfigError(
                f"train-per-condition.recipes: no recipe for backbone {backbone!r} "
                f"(recipes are given for {sorted(self.recipes)})"
            ) from None
