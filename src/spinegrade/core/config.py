"""Typed, frozen views of params.yaml, one dataclass per section.

Sections are named after the stages that read them (``ingest``, ``convert-dicom``, ...).
Loading validates every key: an unknown key, a missing key or a value of the wrong type
raises :class:`ConfigError` naming the dotted key, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from spinegrade.core.errors import ConfigError
from spinegrade.core.vocab import GROUPS, SERIES_SLUGS


@dataclass(frozen=True)
class DataConfig:
    """Where the RSNA-layout dataset comes from.

    Attributes:
        source: ``synthetic`` generates a dataset under ``data/``; ``rsna`` reads a real
            download in place.
        root: the unpacked competition download (``rsna`` only); relative paths are
            resolved against the repository root.
    """

    source: Literal["synthetic", "rsna"] = "synthetic"
    root: str = "data/rsna-2024-lumbar-spine-degenerative-classification"


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and quirk rates of the generated dataset (all rates are probabilities)."""

    seed: int = 2024
    n_train_studies: int = 200
    n_test_studies: int = 6
    workers: int = 2
    sagittal_sizes: tuple[int, ...] = (224, 256, 288)
    axial_sizes: tuple[int, ...] = (160, 192, 224)
    non_square_rate: float = 0.15
    sagittal_fov_mm: tuple[float, float] = (220.0, 260.0)
    axial_fov_mm: tuple[float, float] = (140.0, 180.0)
    sagittal_slices: tuple[int, int] = (13, 17)
    missing_label_rate: float = 0.02
    missing_series_rate: float = 0.01
    multi_axial_rate: float = 0.17
    continuous_axial_rate: float = 0.2
    instance_quirk_rate: float = 0.3
    missing_spacing_rate: float = 0.1
    label_noise_rate: float = 0.02
    noise_sigma: float = 0.04


@dataclass(frozen=True)
class IngestConfig:
    """ingest: how bad label rows are handled, and the generator's settings."""

    on_error: Literal["raise", "skip"] = "raise"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ConvertConfig:
    """convert-dicom: parallelism and what to do with an unreadable file."""

    workers: int = 2
    on_error: Literal["raise", "skip"] = "raise"


@dataclass(frozen=True)
class CropConfig:
    """crop-rois: 2.5D crop geometry.

    Attributes:
        slices: k, the number of neighbouring slices per crop (odd).
        size_px: output crop side in pixels.
        size_mm: crop side in millimetres, per condition group.
    """

    slices: int = 3
    size_px: int = 64
    size_mm: Mapping[str, float] = field(
        default_factory=lambda: {"spinal": 40.0, "foraminal": 32.0, "subarticular": 36.0}
    )

    def __post_init__(self) -> None:
        if self.slices < 1 or self.slices % 2 == 0:
            raise ConfigError(f"crop-rois.slices must be a positive odd number, got {self.slices}")
        if self.size_px < 8:
            raise ConfigError(f"crop-rois.size_px must be at least 8, got {self.size_px}")
        if set(self.size_mm) != set(GROUPS):
            raise ConfigError(
                f"crop-rois.size_mm needs exactly the groups {sorted(GROUPS)}, "
                f"got {sorted(self.size_mm)}"
            )


@dataclass(frozen=True)
class FoldsConfig:
    """split-folds: number of study-level folds and their seed."""

    n_folds: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ConfigError(f"split-folds.n_folds must be at least 2, got {self.n_folds}")


@dataclass(frozen=True)
class Recipe:
    """How one backbone is trained from scratch (per-backbone settings).

    Attributes:
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (linear warm-up, cosine decay) or ``onecycle``.
        warmup_epochs: length of the warm-up (fraction of epochs allowed).
        model_kwargs: extra timm arguments (e.g. ``window_size``, ``ls_init_value``).
        weights: a local checkpoint to start from (instead of random initialisation).
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str = ""


@dataclass(frozen=True)
class TrainingConfig:
    """Settings shared by every (group, backbone) training job."""

    folds: tuple[int, ...] = (0,)
    epochs: int = 8
    patience: int = 3
    batch_size: int = 64
    loss: Literal["weighted_ce", "focal", "ce"] = "weighted_ce"
    class_weights: tuple[float, float, float] = (1.0, 2.0, 4.0)
    focal_gamma: float = 2.0
    oversample: bool = False
    augment: bool = True
    normalize: Literal["crop", "model"] = "crop"
    pretrained: bool = False
    seed: int = 42
    threads: int = 2
    log_model: bool = True

    def __post_init__(self) -> None:
        if not self.folds:
            raise ConfigError("train-per-condition.training.folds must name at least one fold")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError(
                "train-per-condition.training: epochs, batch_size and patience must be >= 1"
            )


@dataclass(frozen=True)
class TrainConfig:
    """train-per-condition: the matrix (groups x backbones), shared settings, recipes."""

    groups: tuple[str, ...] = tuple(GROUPS)
    backbones: tuple[str, ...] = ("resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224")
    training: TrainingConfig = field(default_factory=TrainingConfig)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ConfigError(f"train-per-condition.groups: unknown group(s) {unknown}")

    def recipe(self, backbone: str) -> Recipe:
        """The backbone's recipe (defaults when params give none)."""
        return self.recipes.get(backbone, Recipe())


@dataclass(frozen=True)
class LocalizerInput:
    """One series type's localiser input and training length.

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

    def __post_init__(self) -> None:
        if self.slices < 1 or self.slices % 2 == 0 or self.step_mm <= 0:
            raise ConfigError("slices must be odd and >= 1, step_mm > 0")
        if self.image_px < 32 or self.image_px % 32 or self.epochs < 1:
            raise ConfigError("image_px must be a multiple of 32, epochs >= 1")


@dataclass(frozen=True)
class LocalizerConfig:
    """train-localizer: one heatmap model per series type (a timm encoder + light decoder).

    Attributes:
        series: the matrix: series types to train (sagittal_t2, sagittal_t1, axial_t2).
        encoder: timm name, created with ``features_only``.
        decoder_channels: width of the decoder.
        sigma_px: Gaussian sigma of the target heatmaps, in heatmap pixels.
        inputs: per series type, the slices fed as channels, input size and epochs.
        val_fold: fold held out to measure point error (the model trains on the others).
    """

    series: tuple[str, ...] = ("sagittal_t2", "sagittal_t1", "axial_t2")
    encoder: str = "mobilenetv2_100"
    decoder_channels: int = 32
    sigma_px: float = 1.5
    inputs: Mapping[str, LocalizerInput] = field(default_factory=dict)
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    val_fold: int = 0
    seed: int = 42
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in (*self.series, *self.inputs) if s not in SERIES_SLUGS.values()]
        if unknown:
            raise ConfigError(
                f"train-localizer: unknown series type(s) {unknown}; "
                f"expected some of {list(SERIES_SLUGS.values())}"
            )
        if self.batch_size < 1 or self.sigma_px <= 0:
            raise ConfigError("train-localizer: batch_size must be >= 1 and sigma_px > 0")

    def input_for(self, series: str) -> LocalizerInput:
        """The series type's input (defaults when params give none)."""
        return self.inputs.get(series, LocalizerInput())


@dataclass(frozen=True)
class PredictConfig:
    """predict: grading the held-out test studies end to end.

    Attributes:
        explain: write a Grad-CAM PNG per graded level under the stage's output.
        on_error: ``skip`` a corrupt file (warning names it) or ``raise`` on it.
    """

    explain: bool = True
    on_error: Literal["raise", "skip"] = "skip"


@dataclass(frozen=True)
class MlflowConfig:
    """Where runs go. MLFLOW_TRACKING_URI overrides the default SQLite store in mlruns/."""

    experiment: str = "spinegrade"


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    convert_dicom: ConvertConfig = field(default_factory=ConvertConfig)
    crop_rois: CropConfig = field(default_factory=CropConfig)
    split_folds: FoldsConfig = field(default_factory=FoldsConfig)
    train_per_condition: TrainConfig = field(default_factory=TrainConfig)
    train_localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def _yaml_key(name: str) -> str:
    """Dataclass field name -> params.yaml key (section names use the stage's hyphens)."""
    return name.replace("_", "-") if name in _HYPHENATED else name


_HYPHENATED = {
    "convert_dicom",
    "crop_rois",
    "split_folds",
    "train_per_condition",
    "train_localizer",
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_mapping(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    return value


def from_mapping(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, validating keys and types.

    Keys missing from ``raw`` take the dataclass default. Raises ConfigError naming the
    dotted key of an unknown key or a bad value.
    """
    hints = typing.get_type_hints(cls)
    fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(where + str(k) for k in unknown)}; "
            f"expected some of {sorted(fields)}"
        )
    kwargs = {}
    for ykey, f in fields.items():
        if ykey in raw:
            dotted = f"{prefix}.{ykey}" if prefix else ykey
            kwargs[f.name] = _coerce(raw[ykey], hints[f.name], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith(prefix.split(".")[0]):
            raise ConfigError(f"{prefix}: {exc}") from None
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'params'}: {exc}") from exc


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ConfigError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return from_mapping(Params, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
