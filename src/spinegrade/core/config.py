"""Typed, frozen views of params.yaml, one pydantic model per section.

Sections are named after the stages that read them (``ingest``, ``convert-dicom``, ...);
hyphenated section names are aliases of snake_case attributes (``params.convert_dicom``).
Loading validates every key: an unknown or mistyped key, or a value of the wrong type,
raises :class:`ConfigError` naming the params file and the dotted key as spelt in the file
(``params.yaml: train-per-condition.training.epochs: expected an integer, got 'five'``), so
a typo never silently falls back to a default. Keys a file leaves out take the defaults
below. Validation is strict: no string is read as a number, no number as a boolean.

Built in Python, the models take their attribute names as keyword arguments
(``TrainConfig(training=TrainingConfig(epochs=1))``); invalid values raise pydantic's
``ValidationError`` (a ``ValueError``) there, and :func:`load_params` turns every such error
into a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from spinegrade.core.errors import ConfigError
from spinegrade.core.vocab import GROUPS, SERIES_SLUGS

# Validation context set by load_params: checks that only hold for a whole params file.
_PARAMS_FILE = "params_file"

_T = TypeVar("_T")


def _list_to_tuple(value: Any) -> Any:
    """YAML has lists, not tuples: take a list where a tuple is expected (strict mode
    otherwise insists on a tuple); the items are still validated strictly."""
    return tuple(value) if isinstance(value, list) else value


# A tuple field that a YAML list fills: ``_FromList[tuple[int, ...]]``.
_FromList = Annotated[_T, BeforeValidator(_list_to_tuple)]


class _Section(BaseModel):
    """Every params model: unknown keys rejected, immutable, no type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


# The synthesize stage's output: the dataset ingest reads when data.source is synthetic.
SYNTHETIC_ROOT = "data/raw"


class DataConfig(_Section):
    """Where the RSNA-layout dataset comes from.

    ``root`` is also ingest's (and convert-dicom's) DVC dependency (``${data.root}`` in
    dvc.yaml), so any change to the files under it makes the pipeline stale.

    Attributes:
        source: ``synthetic``: the synthesize stage generates a dataset into ``data/raw``;
            ``rsna``: a real download, read in place.
        root: the dataset folder ingest reads: ``data/raw`` for ``synthetic``; for ``rsna``
            the unpacked competition download (the folder holding train.csv and
            train_images/), either tracked in the workspace (``dvc add data/rsna``) or an
            absolute path outside it. Relative paths are resolved against the repository.
    """

    source: Literal["synthetic", "rsna"] = "synthetic"
    root: str = SYNTHETIC_ROOT

    @model_validator(mode="after")
    def _check(self) -> Self:
        synthetic_root = Path(self.root).as_posix().rstrip("/") == SYNTHETIC_ROOT
        if self.source == "synthetic" and not synthetic_root:
            raise ConfigError(
                f"data.root must be {SYNTHETIC_ROOT} when data.source is synthetic (the "
                f"synthesize stage writes the dataset there), got {self.root!r}; set "
                "data.source: rsna to read a download"
            )
        if self.source == "rsna" and synthetic_root:
            raise ConfigError(
                f"data.root: {SYNTHETIC_ROOT} is the synthesize stage's output; with "
                "data.source: rsna point it at the download (data/rsna after "
                "`dvc add data/rsna`, or an absolute path)"
            )
        return self


class SyntheticConfig(_Section):
    """Size and quirk rates of the generated dataset (all rates are probabilities).

    ``reader_noise``: sd of the reader's error on a level's latent degeneration (latent sd
    units; spinegrade.synthetic.severity), so recorded grades differ from the true ones
    only near a threshold. ``noise_sigma``: image noise sd on the [0, 1] intensity scale.
    ``difficulty``: one knob (0 = clean, 1 = default, 2 = twice) multiplying image noise,
    reader noise, the ambiguity between the anatomy and the grade, scanner contrast,
    resolution and bias variation, and the artifact rate (spinegrade.synthetic.imaging).
    """

    seed: int = 2024
    n_train_studies: int = 200
    n_test_studies: int = 6
    workers: int = 2
    sagittal_sizes: _FromList[tuple[int, ...]] = (224, 256, 288)
    axial_sizes: _FromList[tuple[int, ...]] = (160, 192, 224)
    non_square_rate: float = 0.15
    sagittal_fov_mm: _FromList[tuple[float, float]] = (220.0, 260.0)
    axial_fov_mm: _FromList[tuple[float, float]] = (140.0, 180.0)
    sagittal_slices: _FromList[tuple[int, int]] = (13, 17)
    missing_label_rate: float = 0.02
    missing_series_rate: float = 0.01
    multi_axial_rate: float = 0.17
    continuous_axial_rate: float = 0.2
    instance_quirk_rate: float = 0.3
    missing_spacing_rate: float = 0.1
    reader_noise: float = 0.2
    noise_sigma: float = 0.04
    difficulty: float = Field(1.0, ge=0.0)


class IngestConfig(_Section):
    """ingest: how bad label rows are handled."""

    on_error: Literal["raise", "skip"] = "raise"


class ConvertConfig(_Section):
    """convert-dicom: parallelism and what to do with an unreadable file."""

    workers: int = 2
    on_error: Literal["raise", "skip"] = "raise"


class CropConfig(_Section):
    """crop-rois: 2.5D crop geometry.

    Attributes:
        slices: k, the number of neighbouring slices per crop (odd).
        size_px: output crop side in pixels.
        size_mm: crop side in millimetres, per condition group.
    """

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


class FoldsConfig(_Section):
    """split-folds: number of study-level folds and their seed (at least 3: a scored fold,
    its inner validation fold and a fold to train on)."""

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


class Recipe(_Section):
    """How one backbone is trained from scratch (per-backbone settings).

    Attributes:
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``cosine`` (linear warm-up, cosine decay) or ``onecycle``.
        warmup_epochs: length of the warm-up (fraction of epochs allowed).
        model_kwargs: extra timm arguments (e.g. ``window_size``, ``ls_init_value``).
        weights: a local checkpoint to start from (instead of random initialization).
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0
    model_kwargs: Mapping[str, Any] = Field(default_factory=dict)
    weights: str = ""


class TrainingConfig(_Section):
    """Settings shared by every (group, backbone) training job."""

    folds: _FromList[tuple[int, ...]] = (0,)
    epochs: int = 8
    patience: int = 3
    batch_size: int = 64
    loss: Literal["weighted_ce", "focal", "ce"] = "weighted_ce"
    class_weights: _FromList[tuple[float, float, float]] = (1.0, 2.0, 4.0)
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


class TrainConfig(_Section):
    """train-per-condition: the matrix (groups x backbones), shared settings, recipes.

    Attributes:
        groups: condition groups to train (the DVC matrix's first axis).
        backbones: timm names to train per group (the matrix's second axis).
        training: settings shared by every job.
        recipes: per-backbone settings, with no defaults: a params file that has this
            section needs one for every listed backbone (else a ConfigError at load time),
            and :meth:`recipe` raises ConfigError for a backbone without one.
    """

    groups: _FromList[tuple[str, ...]] = tuple(GROUPS)
    backbones: _FromList[tuple[str, ...]] = (
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
        if info.context and info.context.get(_PARAMS_FILE):
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


class LocalizerInput(_Section):
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

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.slices < 1 or self.slices % 2 == 0 or self.step_mm <= 0:
            raise ConfigError("slices must be odd and >= 1, step_mm > 0")
        if self.image_px < 32 or self.image_px % 32 or self.epochs < 1:
            raise ConfigError("image_px must be a multiple of 32, epochs >= 1")
        return self


class LocalizerConfig(_Section):
    """train-localizer: one heatmap model per series type (a timm encoder + light decoder).

    Attributes:
        series: the matrix: series types to train (sagittal_t2, sagittal_t1, axial_t2).
        encoder: timm name, created with ``features_only``.
        decoder_channels: width of the decoder.
        sigma_px: Gaussian sigma of the target heatmaps, in heatmap pixels.
        inputs: per series type, the slices fed as channels, input size and epochs.
        patience: stop after this many epochs without a lower validation loss.
        val_fold: fold held out to measure point error (the model trains on the others).
        precision: the localisers' own engine.precision (unset: engine.precision). fp32
            by default: MobileNetV2's depthwise convolutions run slower under CPU bf16
            autocast (57 s against 44 s for the sagittal T2 localizer, measured).
    """

    series: _FromList[tuple[str, ...]] = ("sagittal_t2", "sagittal_t1", "axial_t2")
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


class EngineConfig(_Section):
    """engine: where and how both training stages (and predict) run their models.

    Attributes:
        device: ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``. Byte-identical
            outputs for the same params are guaranteed on CPU only.
        precision: ``fp32``; ``bf16`` autocast (CUDA GPUs from Ampere on, CPUs with AVX-512
            bf16 or AMX); ``fp16`` autocast with a gradient scaler; ``auto``: bf16 where the
            device has it, else fp32 (runs log the precision they ran in).
        nproc_per_node: training processes (one per GPU) under torchrun with
            DistributedDataParallel; 1 trains in the stage's own process.
        workers: data-loader worker processes per training process; ``auto``: on CUDA the
            cores shared out among the processes (at most 8 each), on CPU 0 (the step
            itself uses every core there, workers would only take cores from it).
        threads: torch CPU threads per stage (shared out among the processes on CPU;
            0 or less: torch's default).
        deterministic: deterministic kernels and no cuDNN autotuning (slower on GPU).
        channels_last: channels-last memory format for the models on CUDA (tensor cores);
            ignored on CPU, where it gains nothing.
        system_metrics_s: seconds between MLflow system-metrics samples (CPU, RAM, GPU).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    nproc_per_node: int = 1
    workers: Literal["auto"] | int = "auto"
    threads: int = 2
    deterministic: bool = True
    channels_last: bool = True
    system_metrics_s: float = 5.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.nproc_per_node < 1:
            raise ConfigError(f"engine.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if isinstance(self.workers, int) and self.workers < 0:
            raise ConfigError(f"engine.workers must be auto or >= 0, got {self.workers}")
        if self.system_metrics_s <= 0:
            raise ConfigError("engine.system_metrics_s must be > 0")
        return self


class EvaluateConfig(_Section):
    """evaluate: how the out-of-fold results are scored.

    Attributes:
        bootstrap_resamples: study-level bootstrap resamples per interval.
        bootstrap_seed: their seed (the same seed and predictions give the same intervals).
        ci_level: the intervals' coverage (0.95: 2.5th to 97.5th percentile).
        calibration_bins: equal-width confidence bins of the ECE and reliability diagrams.
        ensemble: score the mean of the backbones' calibrated probabilities as model
            ``ensemble`` (predict may then choose it).
    """

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


class PredictConfig(_Section):
    """predict: grading the held-out test studies end to end.

    Attributes:
        explain: write a Grad-CAM PNG per graded level under the stage's output.
        on_error: ``skip`` a corrupt file (warning names it) or ``raise`` on it.
        review: write the review page (review.html: every study's points, crops,
            Grad-CAMs and probabilities, with the answers when known).
    """

    explain: bool = True
    on_error: Literal["raise", "skip"] = "skip"
    review: bool = True


class MlflowConfig(_Section):
    """Where runs go. MLFLOW_TRACKING_URI overrides the default SQLite store in mlruns/."""

    experiment: str = "spinegrade"


class Params(_Section):
    """All of params.yaml (hyphenated section names are the attributes' aliases)."""

    data: DataConfig = Field(default_factory=DataConfig)
    synthesize: SyntheticConfig = Field(default_factory=SyntheticConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    convert_dicom: ConvertConfig = Field(default_factory=ConvertConfig, alias="convert-dicom")
    crop_rois: CropConfig = Field(default_factory=CropConfig, alias="crop-rois")
    split_folds: FoldsConfig = Field(default_factory=FoldsConfig, alias="split-folds")
    train_per_condition: TrainConfig = Field(
        default_factory=TrainConfig, alias="train-per-condition"
    )
    train_localizer: LocalizerConfig = Field(
        default_factory=LocalizerConfig, alias="train-localizer"
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    def localizer_engine(self) -> EngineConfig:
        """The engine params with train-localizer's own precision, where it sets one."""
        if self.train_localizer.precision is None:
            return self.engine
        return self.engine.model_copy(update={"precision": self.train_localizer.precision})


# --------------------------------------------------------------------------- errors

# pydantic error type -> what the key expected (strict mode's type errors).
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "model_type": "a mapping",
}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: one dotted key per value, as ``-S`` and MLflow params
    name them (lists and empty mappings are values)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _dotted(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location -> ``train-per-condition.training.folds[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _annotation_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The type expected at ``loc`` below ``model`` (None if the path leaves the schema)."""
    tp: Any = model
    for part in loc:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = tp.model_fields
            tp = next((f.annotation for n, f in fields.items() if part in (n, f.alias)), None)
        elif origin in (Mapping, dict) and len(args) == 2:
            tp = args[1]
        elif origin is tuple and isinstance(part, int):
            tp = args[0] if args[1:] == (Ellipsis,) else args[part] if part < len(args) else None
        else:
            return None
    return tp


def _format_validation_error(exc: ValidationError, model: type[BaseModel] = Params) -> str:
    """All of a ValidationError on one line, each error naming its dotted YAML key:
    ``crop-rois.slices: expected an integer, got 'three'``.

    Unknown keys come first, per section, with the keys the section accepts; a
    validator's own message is kept as it is (prefixed with its key unless it names it).
    """
    unknown: dict[tuple[int | str, ...], list[str]] = {}
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc, kind, got = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(_dotted(loc))
            continue
        if loc and loc[-1] == "[key]":  # loc is (..., mapping, bad key, "[key]")
            parts.append(f"{_dotted(loc[:-2])}: keys must be strings, got {got!r}")
            continue
        if kind == "missing" and loc and isinstance(loc[-1], int):
            loc, kind = loc[:-1], "too_short"  # a fixed-length list an item short
        key, tp = _dotted(loc), _annotation_at(model, loc)
        if kind in ("value_error", "assertion_error") and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])
            keyed = not key or msg.startswith((f"{key}.", f"{key}:", f"{key} "))
            parts.append(msg if keyed else f"{key}: {msg}")
            continue
        if kind == "literal_error" and typing.get_origin(tp) is Literal:
            expected = f"one of {list(typing.get_args(tp))}"
        elif kind in ("too_short", "too_long") and typing.get_origin(tp) is tuple:
            expected = f"{len(typing.get_args(tp))} values"
        else:
            expected = _EXPECTED.get(kind, "")
        shown = repr(list(got) if isinstance(got, tuple) else got)  # as the YAML list
        what = f"expected {expected}" if expected else err["msg"]
        parts.append(f"{key}: {what}, got {shown}")
    for section, keys in reversed(unknown.items()):
        fields = _annotation_at(model, section).model_fields
        accepted = sorted(f.alias or n for n, f in fields.items())
        parts.insert(0, f"unknown key(s) {', '.join(keys)} (expected some of {accepted})")
    return "; ".join(parts)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file.

    Raises:
        ConfigError: for any problem, in one line naming the file and the dotted key
            (``params.yaml: convert-dicom.workers: expected an integer, got 'two'``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        # by_name=False: the file must use the YAML spellings (convert-dicom, not
        # convert_dicom), so each key has one name there.
        return Params.model_validate(
            raw, by_alias=True, by_name=False, context={_PARAMS_FILE: str(path)}
        )
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_validation_error(exc)}") from None
