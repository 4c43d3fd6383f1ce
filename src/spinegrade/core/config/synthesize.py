"""The ``synthesize`` section: size and quirks of the generated dataset."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from spinegrade.core.config.base import FromList, Section


class SyntheticConfig(Section):
    """Size and quirk rates of the generated dataset (all rates are probabilities).

    ``reader_noise``: sd of the reader's error on a level's latent degeneration (latent sd
    units; spinegrade.synthetic.severity), so recorded grades differ from the true ones
    only near a threshold. ``noise_sigma``: image noise sd on the [0, 1] intensity scale.
    ``difficulty``: one knob (0 = clean, 1 = default, 2 = twice) multiplying image noise,
    reader noise, the ambiguity between the anatomy and the grade, scanner contrast,
    resolution and bias variation, and the artifact rate (spinegrade.synthetic.imaging).
    """

    key: ClassVar[str] = "synthesize"

    seed: int = 2024
    n_train_studies: int = Field(200, ge=1)
    n_test_studies: int = Field(6, ge=0)
    workers: int = 2
    sagittal_sizes: FromList[tuple[int, ...]] = (224, 256, 288)
    axial_sizes: FromList[tuple[int, ...]] = (160, 192, 224)
    non_square_rate: float = 0.15
    sagittal_fov_mm: FromList[tuple[float, float]] = (220.0, 260.0)
    axial_fov_mm: FromList[tuple[float, float]] = (140.0, 180.0)
    sagittal_slices: FromList[tuple[int, int]] = (13, 17)
    missing_label_rate: float = 0.02
    missing_series_rate: float = 0.01
    multi_axial_rate: float = 0.17
    continuous_axial_rate: float = 0.2
    instance_quirk_rate: float = 0.3
    missing_spacing_rate: float = 0.1
    reader_noise: float = 0.2
    noise_sigma: float = 0.04
    difficulty: float = Field(1.0, ge=0.0)
