"""The synthetic generator: competition format, DICOM headers, determinism, learnable severity."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pydicom
from conftest import tiny_synthetic

from spinegrade.core import vocab
from spinegrade.core.vocab import TEST_LABELS_CSV
from spinegrade.synthetic.anatomy import CLASS_BALANCE, FORAMEN_SCALE, Anatomy, render
from spinegrade.synthetic.dataset import _draw_grades, generate_dataset


def _header(path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def test_csv_headers_and_spellings(tiny_dataset):
    assert _header(tiny_dataset / "train.csv") == list(vocab.TRAIN_CSV_HEADER)
    assert _header(tiny_dataset / "train_label_coordinates.csv") == [
        "study_id",
        "series_id",
        "instance_number",
        "condition",
        "level",
        "x",
        "y",
    ]
    for name in ("train_series_descriptions.csv", "test_series_descriptions.csv"):
        assert _header(tiny_dataset / name) == ["study_id", "series_id", "series_description"]
    coords = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    assert set(coords["condition"]) <= {
        "Spinal Canal Stenosis",
        "Left Neural Foraminal Narrowing",
        "Right Neural Foraminal Narrowing",
        "Left Subarticular Stenosis",
        "Right Subarticular Stenosis",
    }
    assert set(coords["level"]) <= {"L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"}
    for col in ("study_id", "series_id", "instance_number"):
        assert coords[col].dtype == np.int64
    assert coords["x"].dtype == np.float64
    train = pd.read_csv(tiny_dataset / "train.csv", dtype=str, keep_default_na=False)
    values = set(train.drop(columns="study_id").to_numpy().ravel())
    assert values <= {"Normal/Mild", "Moderate", "Severe", ""}
    series = pd.read_csv(tiny_dataset / "train_series_descriptions.csv")
    assert set(series["series_description"]) <= {"Sagittal T1", "Sagittal T2/STIR", "Axial T2"}


def test_image_tree_matches_tables(tiny_dataset):
    for split in ("train", "test"):
        series = pd.read_csv(tiny_dataset / f"{split}_series_descriptions.csv")
        for r in series.itertuples():
            d = tiny_dataset / f"{split}_images" / str(r.study_id) / str(r.series_id)
            assert any(d.glob("*.dcm")), d
    coords = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    for r in coords.itertuples():
        assert (
            tiny_dataset
            / "train_images"
            / str(r.study_id)
            / str(r.series_id)
            / f"{r.instance_number}.dcm"
        ).is_file()
    test_labels = pd.read_csv(tiny_dataset / TEST_LABELS_CSV)
    test_series = pd.read_csv(tiny_dataset / "test_series_descriptions.csv")
    assert set(test_labels["study_id"]) == set(test_series["study_id"])
    train = pd.read_csv(tiny_dataset / "train.csv")
    assert not set(train["study_id"]) & set(test_labels["study_id"])


def test_dicom_headers_are_real_mr_with_geometry(tiny_dataset):
    files = sorted((tiny_dataset / "train_images").rglob("*.dcm"))[:40]
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality == "MR"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsAllocated == 16 and ds.SamplesPerPixel == 1
        assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
        assert len(ds.PixelSpacing) == 2
        assert ds.SeriesDescription in vocab.SERIES_TYPES
        assert int(ds.InstanceNumber) == int(f.stem)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert str(ds.PatientName) and ds.PatientID.startswith("PID") and ds.PatientBirthDate


def test_quirks_occur(tiny_dataset):
    series = pd.read_csv(tiny_dataset / "train_series_descriptions.csv")
    axial_per_study = series[series["series_description"] == "Axial T2"].groupby("study_id").size()
    assert axial_per_study.max() >= 2  # several axial series in some study
    starts = [
        min(int(p.stem) for p in d.glob("*.dcm"))
        for d in (tiny_dataset / "train_images").glob("*/*")
    ]
    assert max(starts) > 1  # instance numbers that do not start at 1
    shapes = {
        pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).Rows
        for d in (tiny_dataset / "train_images").glob("*/*")
    }
    assert len(shapes) > 1  # image sizes vary


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path):
    cfg = tiny_synthetic(n_train_studies=2, n_test_studies=1)
    a = generate_dataset(cfg, tmp_path / "a")
    b = generate_dataset(cfg, tmp_path / "b")
    assert _tree_digest(a) == _tree_digest(b)
    c = generate_dataset(
        tiny_synthetic(n_train_studies=2, n_test_studies=1, seed=8), tmp_path / "c"
    )
    assert _tree_digest(a) != _tree_digest(c)


def test_class_balance_follows_real_frequencies():
    rng = np.random.default_rng(0)
    for group, counts in CLASS_BALANCE.items():
        draws = np.concatenate([_draw_grades(rng, None, group, k, 4000) for k in range(5)])
        observed = np.bincount(draws, minlength=3) / len(draws)
        expected = np.array(counts) / sum(counts)
        np.testing.assert_allclose(observed, expected, atol=0.02)


def _foramen_fat_area(scale: float) -> int:
    """Bright (fat) pixels of a 0.25 mm grid through the left L3/L4 foramen on T1."""
    anatomy = Anatomy(
        x0=0.0,
        y0=0.0,
        disc_z=np.array([60.0, 25, -10, -45, -80]),
        period=35.0,
        bulge=np.zeros(5),
        foramen=np.full((2, 5), scale),
        recess=np.ones((2, 5)),
    )
    v, z = np.meshgrid(np.arange(-15, 10, 0.25), np.arange(-20, 8, 0.25), indexing="ij")
    pts = np.stack([np.full_like(v, 18.0), v, z], axis=-1)
    return int((render(anatomy, pts, weighting=0) > 0.8).sum())


def test_foramen_size_encodes_severity():
    """The fat-filled foramen seen on T1 shrinks with each severity step."""
    areas = [_foramen_fat_area(float(np.mean(FORAMEN_SCALE[g]))) for g in range(3)]
    assert areas[0] > 1.5 * areas[1] > 0
    assert areas[1] > 2 * areas[2]
