"""The ``crop-rois`` section: 2.5D crop geometry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

from pydantic import Field, model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError
from spinegrade.core.vocab import GROUPS


class CropConfig(Section):
    """crop-rois: 2.5D crop geometry.

    Attributes:
        slices: k, the number of neighbouring slices per crop (odd).
        size_px: output crop side in pixels.
        size_mm: crop side in millimetres, per condition group.
    """

    key: ClassVar[str] = "crop-rois"

    slices: int = 3
    size_px: int = 64
    size_mm: Mapping[str, float] = Field(
        default_factory=lambda: {"spinal": 40.0, "foraminal": 32.0, "subarticular": 36.0}
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.slices < 1 or self.slices % 2 == 0:
            raise ConfigError(f"crop-rois.slices must be a positive odd number, got {self.slices}")
        if self.size_px < 8:
            raise ConfigError(f"crop-rois.size_px must be at least 8, got {self.size_px}")
        if set(self.size_mm) != set(GROUPS):
            raise ConfigError(
                f"crop-rois.size_mm needs exactly the groups {sorted(GROUPS)}, "
                f"got {sorted(self.size_mm)}"
            )
        return self
