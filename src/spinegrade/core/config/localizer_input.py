"""What one series type's localizer reads: the input of train-localizer's ``inputs`` entries,
which predict rebuilds from a trained localizer's metadata (so predict imports this module,
not the train-localizer section)."""

from __future__ import annotations

from typing import Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError


class LocalizerInput(Section):
    """One series type's localizer input and training length.

    Attributes:
        slices: slices fed as channels (odd), ``step_mm`` apart along the slice normal,
            centred on the stack's middle (sagittal) or on the level's slice (axial).
        image_px: input side in pixels (slices are resized to it).
        epochs: training epochs.
    """

    slices: int = 3
    step_mm: float = 4.0
    image_px: int = 128
    epochs: int = 12

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.slices < 1 or self.slices % 2 == 0 or self.step_mm <= 0:
            raise ConfigError("slices must be odd and >= 1, step_mm > 0")
        if self.image_px < 32 or self.image_px % 32 or self.epochs < 1:
            raise ConfigError("image_px must be a multiple of 32, epochs >= 1")
        return self
