"""The ``evaluate`` section: how the out-of-fold results are scored."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError


class EvaluateConfig(Section):
    """evaluate: how the out-of-fold results are scored.

    Attributes:
        bootstrap_resamples: study-level bootstrap resamples per interval.
        bootstrap_seed: their seed (the same seed and predictions give the same intervals).
        ci_level: the intervals' coverage (0.95: 2.5th to 97.5th percentile).
        calibration_bins: equal-width confidence bins of the ECE and reliability diagrams.
        ensemble: score the mean of the backbones' calibrated probabilities as model
            ``ensemble`` (predict may then choose it).
    """

    key: ClassVar[str] = "evaluate"

    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    ci_level: float = 0.95
    calibration_bins: int = 10
    ensemble: bool = True

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.bootstrap_resamples < 100:
            raise ConfigError("evaluate.bootstrap_resamples must be >= 100")
        if not 0.5 <= self.ci_level < 1.0:
            raise ConfigError(f"evaluate.ci_level must be in [0.5, 1), got {self.ci_level}")
        if self.calibration_bins < 2:
            raise ConfigError("evaluate.calibration_bins must be >= 2")
        return self
