"""params.yaml parsing: typed, frozen, and errors that name the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from spinegrade.core.config.base import SECTIONS, load_sections
from spinegrade.core.config.convert_dicom import ConvertConfig
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.config.params import Params, load_params
from spinegrade.core.config.predict import PredictConfig
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.split_folds import FoldsConfig
from spinegrade.core.config.train_localizer import LocalizerConfig
from spinegrade.core.config.train_per_condition import TrainingConfig, TrainPerConditionConfig
from spinegrade.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.crop_rois.size_mm["spinal"] > 0
    assert params.convert_dicom.workers >= 1
    with pytest.raises(ValidationError, match="frozen"):
        params.split_folds.n_folds = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("data:\n  sourc: rsna\n", r"unknown key\(s\) data\.sourc"),
        ("data:\n  source: kaggle\n", r"data\.source: expected one of \['synthetic', 'rsna'\]"),
        ("convert-dicom:\n  workers: two\n", r"convert-dicom\.workers: expected an integer"),
        ("crop-rois:\n  slices: 4\n", r"slices must be a positive odd number"),
        ("crop-rois:\n  size_mm: {spinal: 40}\n", r"size_mm needs exactly the groups"),
        (
            "synthesize:\n  sagittal_fov_mm: [1]\n",
            r"synthesize\.sagittal_fov_mm",
        ),
        ("split-folds:\n  n_folds: 2\n", r"n_folds must be at least 3"),
        ("data:\n  root: data/rsna\n", r"data\.root must be data/raw when data\.source"),
        ("data:\n  source: rsna\n", r"data/raw is the synthesize stage's output"),
        ("- a list\n", r"mapping at the top level"),
        ("train-localizer:\n  series: [coronal]\n", r"train-localizer: unknown series.*coronal"),
        (
            "train-localizer:\n  inputs: {axial_t2: {slices: 2}}\n",
            r"train-localizer\.inputs\.axial_t2: slices must be odd",
        ),
        (
            "train-localizer:\n  inputs: {axial_t2: {image_px: 100}}\n",
            r"train-localizer\.inputs\.axial_t2: image_px must be a multiple of 32",
        ),
        ("predict:\n  on_error: ignore\n", r"predict\.on_error: expected one of"),
        # the two sections that draw bootstrap intervals check them under their own key
        ("evaluate:\n  bootstrap_resamples: 50\n", r"evaluate\.bootstrap_resamples must be >= 100"),
        ("predict:\n  bootstrap_resamples: 50\n", r"predict\.bootstrap_resamples must be >= 100"),
        ("predict:\n  ci_level: 1.5\n", r"predict\.ci_level must be in \[0\.5, 1\), got 1\.5"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_params(_write(tmp_path, text))


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


# ----------------------------------------------------------------- pydantic models


def test_params_yaml_loads_into_frozen_typed_models():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params == load_params(REPO / "params.yaml")
    tpc = params.train_per_condition
    assert isinstance(tpc.training, TrainingConfig) and params.engine.threads == 2
    assert params.engine.device == "auto" and params.engine.precision == "auto"
    assert params.train_localizer.precision == "fp32"
    assert isinstance(tpc.backbones, tuple) and isinstance(tpc.training.folds, tuple)
    assert isinstance(params.synthesize.sagittal_fov_mm[0], float)
    for backbone in tpc.backbones:
        assert isinstance(tpc.recipe(backbone), Recipe)
    assert params.train_localizer.input_for("sagittal_t1").slices == 5
    assert hash(params.split_folds) == hash(FoldsConfig(n_folds=5, seed=42))


def test_params_yaml_spells_out_every_field():
    """params.yaml names every setting (YAML spelling), so nothing hides in code defaults."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def check(model: type[BaseModel], node: dict, prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = info.alias or name
            assert key in node, f"params.yaml lacks {prefix}{key}"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                check(info.annotation, node[key], f"{prefix}{key}.")

    check(Params, raw, "")


def test_frozen_model_refuses_assignment():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        params.split_folds.n_folds = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        params.train_per_condition.training.epochs = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        params.crop_rois = CropConfig()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "dotted"),
    [
        ("train-per-condition:\n  training:\n    epoch: 3\n", "train-per-condition.training.epoch"),
        (
            "train-per-condition:\n  recipes:\n    resnet50: {lr: 0.1, warmup: 1.0}\n",
            "train-per-condition.recipes.resnet50.warmup",
        ),
        (
            "train-localizer:\n  inputs: {axial_t2: {slice: 3}}\n",
            "train-localizer.inputs.axial_t2.slice",
        ),
        ("synthesize:\n  n_studies: 3\n", "synthesize.n_studies"),
        ("crop_rois:\n  slices: 3\n", "crop_rois"),  # the file spells sections with hyphens
    ],
)
def test_unknown_nested_key_names_the_file_and_the_dotted_yaml_path(tmp_path, text, dotted):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown key(s) {dotted} (expected some of [")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ingest:\n  on_error: maybe\n", r"ingest\.on_error: expected one of \['raise', 'skip'\]"),
        (
            "train-per-condition:\n  training:\n    epochs: true\n",
            r"train-per-condition\.training\.epochs: expected an integer, got True",
        ),
        (
            "train-per-condition:\n  recipes:\n    resnet50: {lr: true}\n",
            r"train-per-condition\.recipes\.resnet50\.lr: expected a number, got True",
        ),
        (
            "train-per-condition:\n  training:\n    folds: '0'\n",
            r"train-per-condition\.training\.folds: expected a list, got '0'",
        ),
        (
            "train-per-condition:\n  training:\n    folds: [0, one]\n",
            r"train-per-condition\.training\.folds\[1\]: expected an integer, got 'one'",
        ),
        (
            "train-per-condition:\n  training:\n    class_weights: [1.0, 2.0]\n",
            r"train-per-condition\.training\.class_weights: expected 3 values, got \[1\.0, 2\.0\]",
        ),
        ("predict:\n  explain: 'yes'\n", r"predict\.explain: expected true or false, got 'yes'"),
        ("mlflow:\n  experiment: 3\n", r"mlflow\.experiment: expected a string, got 3"),
        ("split-folds: 5\n", r"split-folds: expected a mapping, got 5"),
        ("data: [unclosed\n", r"line 2: not valid YAML"),
    ],
)
def test_strict_types_name_the_file_and_the_key(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: .*{match}") as info:
        load_params(path)
    assert "\n" not in str(info.value)


def test_several_errors_are_reported_on_one_line(tmp_path):
    path = _write(tmp_path, "convert-dicom:\n  workers: two\n  on_error: maybe\n  wokers: 2\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: unknown key(s) convert-dicom.wokers (expected some of ['on_error', 'workers']); "
        "convert-dicom.workers: expected an integer, got 'two'; "
        "convert-dicom.on_error: expected one of ['raise', 'skip'], got 'maybe'"
    )


def test_backbone_without_recipe_is_an_error_at_load_time(tmp_path):
    path = _write(
        tmp_path,
        "train-per-condition:\n"
        "  backbones: [resnet50, densenet121]\n"
        "  recipes:\n"
        "    resnet50: {lr: 0.001}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: train-per-condition.recipes: no recipe for backbone(s) ['densenet121'] "
        "listed in train-per-condition.backbones"
    )


def test_recipe_of_an_unknown_backbone_raises():
    train = load_params(REPO / "params.yaml").train_per_condition
    with pytest.raises(ConfigError, match=r"train-per-condition\.recipes: .*'densenet121'"):
        train.recipe("densenet121")
    with pytest.raises(ConfigError, match="no recipe for backbone 'resnet50'"):
        TrainPerConditionConfig().recipe("resnet50")  # no silent defaults in code either


def test_models_take_attribute_names_as_keyword_arguments():
    train = TrainPerConditionConfig(
        backbones=("resnet18",),
        training=TrainingConfig(folds=[0, 2], epochs=1),
        recipes={"resnet18": Recipe(lr=1e-3)},
    )
    assert train.training.folds == (0, 2) and train.recipe("resnet18").lr == 1e-3
    params = Params(convert_dicom=ConvertConfig(workers=1), train_per_condition=train)
    assert params.convert_dicom.workers == 1 and params.train_per_condition is train
    assert params.model_dump(by_alias=True)["convert-dicom"] == {
        "workers": 1,
        "on_error": "raise",
    }
    updated = params.split_folds.model_copy(update={"n_folds": 3})
    assert updated.n_folds == 3 and params.split_folds.n_folds == 5
    assert LocalizerConfig().input_for("axial_t2") == LocalizerInput()  # optional inputs
    with pytest.raises(ValidationError, match="valid integer"):
        ConvertConfig(workers="two")  # type: ignore[arg-type]


# ------------------------------------------------------------- one section at a time


def test_a_stage_loads_only_its_sections(tmp_path):
    """load_sections validates the sections asked for: another section's bad value is not
    this stage's error (DVC re-runs a stage only for the params it declares)."""
    path = _write(tmp_path, "convert-dicom:\n  workers: 3\npredict:\n  on_error: ignore\n")
    params = load_sections(path, ConvertConfig, EngineConfig)
    assert params.convert_dicom == ConvertConfig(workers=3)
    assert params.engine == EngineConfig()  # absent from the file: the defaults
    assert not hasattr(params, "predict")
    with pytest.raises(ValidationError, match="frozen"):
        params.engine = EngineConfig()  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"predict\.on_error: expected one of"):
        load_sections(path, PredictConfig)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("crop_rois:\n  slices: 3\n", r"unknown key\(s\) crop_rois \(expected some of \["),
        ("convert-dicom:\n  workers: two\n", r"convert-dicom\.workers: expected an integer"),
        ("convert-dicom:\n  wokers: 2\n", r"unknown key\(s\) convert-dicom\.wokers"),
    ],
)
def test_a_stage_still_refuses_unknown_sections_and_bad_keys_of_its_own(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {match}"):
        load_sections(path, ConvertConfig)


def test_every_section_has_its_module_and_key():
    """SECTIONS lists params.yaml's top-level keys; Params has one field per key, each a
    model whose ``key`` is that key and which lives in core/config/<key>.py."""
    fields = {f.alias or n: f.annotation for n, f in Params.model_fields.items()}
    assert list(fields) == list(SECTIONS)
    for key, model in fields.items():
        assert model.key == key
        assert model.__module__ == f"spinegrade.core.config.{key.replace('-', '_')}"
    assert list(yaml.safe_load((REPO / "params.yaml").read_text())) == list(SECTIONS)
