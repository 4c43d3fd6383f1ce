"""The ``train-localizer`` section (one heatmap model per series type) and the engine params
the localizers train with (``localizer_engine``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from spinegrade.core.config.base import FromList, Section
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.errors import ConfigError
from spinegrade.core.vocab import SERIES_SLUGS


class LocalizerConfig(Section):
    """train-localizer: one heatmap model per series type (a timm encoder + light decoder).

    Attributes:
        series: the matrix: series types to train (sagittal_t2, sagittal_t1, axial_t2).
        encoder: timm name, created with ``features_only``.
        decoder_channels: width of the decoder.
        sigma_px: Gaussian sigma of the target heatmaps, in heatmap pixels.
        inputs: per series type, the slices fed as channels, input size and epochs.
        patience: stop after this many epochs without a lower validation loss.
        val_fold: fold held out to measure point error (the model trains on the others).
        precision: the localizers' own engine.precision (unset: engine.precision). fp32
            by default: MobileNetV2's depthwise convolutions run slower under CPU bf16
            autocast (57 s against 44 s for the sagittal T2 localizer, measured).
    """

    key: ClassVar[str] = "train-localizer"

    series: FromList[tuple[str, ...]] = ("sagittal_t2", "sagittal_t1", "axial_t2")
    encoder: str = "mobilenetv2_100"
    decoder_channels: int = 32
    sigma_px: float = 1.5
    inputs: Mapping[str, LocalizerInput] = Field(default_factory=dict)
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4
    augment: bool = True
    val_fold: int = 0
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        unknown = [s for s in (*self.series, *self.inputs) if s not in SERIES_SLUGS.values()]
        if unknown:
            raise ConfigError(
                f"train-localizer: unknown series type(s) {unknown}; "
                f"expected some of {list(SERIES_SLUGS.values())}"
            )
        if self.batch_size < 1 or self.sigma_px <= 0 or self.patience < 1:
            raise ConfigError(
                "train-localizer: batch_size and patience must be >= 1 and sigma_px > 0"
            )
        return self

    def input_for(self, series: str) -> LocalizerInput:
        """The series type's input; :class:`LocalizerInput`'s defaults when ``inputs`` has
        none for it (unlike recipes, inputs are optional per series type)."""
        return self.inputs.get(series, LocalizerInput())


def localizer_engine(cfg: LocalizerConfig, engine: EngineConfig) -> EngineConfig:
    """The engine params with train-localizer's own precision, where it sets one."""
    if cfg.precision is None:
        return engine
    return EngineConfig.model_validate({**engine.model_dump(), "precision": cfg.precision})
