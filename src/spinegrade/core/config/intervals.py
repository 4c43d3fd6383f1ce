"""How a study-level bootstrap interval is drawn: the settings the ``evaluate`` section
(out-of-fold intervals) and the ``predict`` section (held-out intervals) each hold, so that
changing one stage's intervals re-runs that stage alone (``scoring.bootstrap`` reads them)."""

from __future__ import annotations

from typing import Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError


class IntervalSettings(Section):
    """Study-level bootstrap intervals (a base of the sections that draw them).

    Attributes:
        bootstrap_resamples: study-level bootstrap resamples per interval.
        bootstrap_seed: their seed (the same seed and predictions give the same intervals).
        ci_level: the intervals' coverage (0.95: 2.5th to 97.5th percentile).
    """

    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    ci_level: float = 0.95

    @model_validator(mode="after")
    def _check_intervals(self) -> Self:
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"{self.key}.bootstrap_resamples must be >= 100")
        if not 0.5 <= self.ci_level < 1.0:
            raise ConfigError(f"{self.key}.ci_level must be in [0.5, 1), got {self.ci_level}")
        return self
