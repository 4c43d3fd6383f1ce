"""The ``evaluate`` section: how the out-of-fold results are scored."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from spinegrade.core.config.intervals import IntervalSettings
from spinegrade.core.errors import ConfigError


class EvaluateConfig(IntervalSettings):
    """evaluate: how the out-of-fold results are scored.

    Attributes:
        bootstrap_resamples, bootstrap_seed, ci_level: the out-of-fold intervals
            (``IntervalSettings``).
        calibration_bins: equal-width confidence bins of the ECE and reliability diagrams.
        ensemble: score the mean of the backbones' calibrated probabilities as model
            ``ensemble`` (predict may then choose it).
    """

    key: ClassVar[str] = "evaluate"

    calibration_bins: int = 10
    ensemble: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.calibration_bins < 2:
            raise ConfigError("evaluate.calibration_bins must be >= 2")
        return self
