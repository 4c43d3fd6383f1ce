"""params.yaml parsing: typed, frozen, and errors that name the bad key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from spinegrade.core.config import Params, load_params
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
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.split_folds.n_folds = 3  # type: ignore[misc]


def test_params_file_lists_every_default_key():
    """params.yaml spells out every setting, so nothing hides in code defaults."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    loaded = load_params(REPO / "params.yaml")
    assert loaded == load_params(REPO / "params.yaml")

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            name = f.name.replace("_", "-") if prefix == "" and "_" in f.name else f.name
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    for dotted in keys(Params()):
        node = raw
        for part in dotted.split("."):
            assert part in node, f"params.yaml lacks {dotted}"
            node = node[part]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("data:\n  sourc: rsna\n", r"unknown key\(s\) data\.sourc"),
        ("data:\n  source: kaggle\n", r"data\.source: expected one of \['synthetic', 'rsna'\]"),
        ("convert-dicom:\n  workers: two\n", r"convert-dicom\.workers: expected an integer"),
        ("crop-rois:\n  slices: 4\n", r"slices must be a positive odd number"),
        ("crop-rois:\n  size_mm: {spinal: 40}\n", r"size_mm needs exactly the groups"),
        (
            "ingest:\n  synthetic:\n    sagittal_fov_mm: [1]\n",
            r"ingest\.synthetic\.sagittal_fov_mm",
        ),
        ("split-folds:\n  n_folds: 1\n", r"n_folds must be at least 2"),
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
    ],
)
def test_bad_params_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_params(_write(tmp_path, text))


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
