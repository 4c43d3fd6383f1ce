"""The ``split-folds`` section."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError


class FoldsConfig(Section):
    """split-folds: number of study-level folds and their seed (at least 3: a scored fold,
    its inner validation fold and a fold to train on)."""

    key: ClassVar[str] = "split-folds"

    n_folds: int = 5
    seed: int = 42

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.n_folds < 3:
            raise ConfigError(
                f"split-folds.n_folds must be at least 3 (scored, inner validation and "
                f"training folds), got {self.n_folds}"
            )
        return self
