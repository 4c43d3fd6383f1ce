"""Series routing without series_descriptions.csv: from SeriesDescription, from the plane
and the timing tags, from the image; overrides, unroutable series, warnings, no identifiers
in what it reports; and the series table `spinegrade predict` builds from it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers import header_identifiers, predict_args, write_bundle

import spinegrade.data.routing as routing
from spinegrade.cli.main import parse_series_types, predict_series_table
from spinegrade.core import vocab
from spinegrade.core.errors import ConfigError, DataError
from spinegrade.data.routing import (
    canal_contrast,
    plane_of,
    route_series,
    route_studies,
    route_study,
    type_of_description,
    weighting_of,
)

TIMING_TAGS = ("RepetitionTime", "EchoTime", "InversionTime")

# Header values that must never reach a reason or a warning, besides the patient's.
UID_AND_DATE_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDate")

SPLITS = ("train", "test")


def _rewrite(src: Path, dst: Path, drop: tuple[str, ...] = (), **values) -> None:
    """Copy the DICOM tree ``src`` to ``dst`` without the tags ``drop``, with ``values`` set."""
    for f in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        for tag in drop:
            if tag in ds:
                delattr(ds, tag)
        for tag, value in values.items():
            setattr(ds, tag, value)
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)


def _stripped(root: Path, out: Path, drop: tuple[str, ...]) -> Path:
    for split in SPLITS:
        _rewrite(root / f"{split}_images", out / f"{split}_images", drop)
    return out


@pytest.fixture(scope="module")
def no_description(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset's images without SeriesDescription (the timing tags kept)."""
    return _stripped(tiny_dataset, tmp_path_factory.mktemp("nodesc"), ("SeriesDescription",))


@pytest.fixture(scope="module")
def no_header_hint(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset's images without SeriesDescription and the timing tags."""
    drop = ("SeriesDescription", *TIMING_TAGS)
    return _stripped(tiny_dataset, tmp_path_factory.mktemp("nohint"), drop)


@pytest.fixture
def no_pixels(monkeypatch):
    """Fail any pixel read: the header bases must decide on headers alone."""

    def refuse(path):
        raise AssertionError(f"{path}: pixels read")

    monkeypatch.setattr(routing, "read_slice", refuse)


def _routed_vs_csv(tiny_dataset: Path, images_root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every series' CSV type beside its routed one (and basis), and the warnings."""
    rows, warnings = [], []
    for split in SPLITS:
        result = route_studies(images_root / f"{split}_images")
        truth = pd.read_csv(tiny_dataset / f"{split}_series_descriptions.csv")
        merged = truth.merge(
            result.series, on=["study_id", "series_id"], how="outer", suffixes=("", "_routed")
        )
        rows.append(merged)
        warnings += result.warnings
    return pd.concat(rows, ignore_index=True), warnings


def _expected_warnings(tiny_dataset: Path) -> list[str]:
    """The routing warnings the CSV implies: each study's missing types."""
    out = []
    for split in SPLITS:
        truth = pd.read_csv(tiny_dataset / f"{split}_series_descriptions.csv")
        for study, group in truth.groupby("study_id"):
            out += [
                f"study {study}: no series routed to {t}"
                for t in vocab.SERIES_TYPES
                if t not in set(group["series_description"])
            ]
    return sorted(out)


def test_timing_routes_every_series_as_the_csv_does(tiny_dataset, no_description, no_pixels):
    merged, warnings = _routed_vs_csv(tiny_dataset, no_description)
    assert len(merged) >= 30
    assert (merged["series_description"] == merged["series_description_routed"]).all(), merged
    assert set(merged["basis"]) == {"timing"}
    sagittal = merged[merged["series_description"] != vocab.AXIAL_T2]
    assert sagittal["reason"].str.match(r"sagittal plane, TR \d+ ms TE [\d.]+ ms").all()
    assert merged["reason"].str.contains(" TI ").any()  # a STIR series
    assert sorted(warnings) == _expected_warnings(tiny_dataset)


def test_image_routes_every_series_as_the_csv_does(tiny_dataset, no_header_hint, monkeypatch):
    middles = []
    read_slice = routing.read_slice

    def counted(path):
        middles.append(Path(path))
        return read_slice(path)

    monkeypatch.setattr(routing, "read_slice", counted)
    merged, warnings = _routed_vs_csv(tiny_dataset, no_header_hint)
    assert (merged["series_description"] == merged["series_description_routed"]).all(), merged
    axial = merged["series_description"] == vocab.AXIAL_T2
    assert set(merged.loc[axial, "basis"]) == {"plane"}
    assert merged.loc[axial, "reason"].str.contains("only axial type").all()
    assert set(merged.loc[~axial, "basis"]) == {"image"}
    t1 = merged["series_description"] == vocab.SAGITTAL_T1
    assert merged.loc[t1, "reason"].str.contains("CSF darker").all()
    assert merged.loc[~axial & ~t1, "reason"].str.contains("CSF brighter").all()
    assert sorted(warnings) == _expected_warnings(tiny_dataset)
    # one slice per sagittal series, its middle one by position
    assert len(middles) == int((~axial).sum()) == len({p.parent for p in middles})
    for path in middles:
        depth = {}
        for f in path.parent.glob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            depth[f] = float(ds.ImagePositionPatient[0])
        order = sorted(depth, key=depth.get)
        assert order.index(path) in {len(order) // 2, (len(order) - 1) // 2}


def test_description_basis_wins(tiny_dataset, no_pixels):
    merged, _ = _routed_vs_csv(tiny_dataset, tiny_dataset)
    assert (merged["series_description"] == merged["series_description_routed"]).all()
    assert set(merged["basis"]) == {"description"}
    assert (merged["reason"] == "SeriesDescription '" + merged["series_description"] + "'").all()


def test_description_spellings():
    assert type_of_description("Sagittal T1") == vocab.SAGITTAL_T1
    assert type_of_description("SAG T1 TSE") == vocab.SAGITTAL_T1
    assert type_of_description("sagittal_t1w") == vocab.SAGITTAL_T1
    for text in ("Sagittal T2/STIR", "SAG STIR", "Sag T2 STIR", "sagittal t2", "SAG_TIRM"):
        assert type_of_description(text) == vocab.SAGITTAL_T2, text
    for text in ("Axial T2", "AX T2 FSE", "axial-t2w", "TRA T2"):
        assert type_of_description(text) == vocab.AXIAL_T2, text
    for text in (
        "",
        "Localizer",
        "Coronal T2",
        "Axial T1",  # not one of the three types
        "Axial STIR",
        "Sagittal T1 T2",  # two weightings
        "Sagittal Axial T2",  # two planes
        "Sagittal T1 Jane",  # a word it does not know
        "Sagittal PD",
        "T2",
    ):
        assert type_of_description(text) is None, text


def test_plane_and_weighting_thresholds():
    assert plane_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert plane_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert plane_of([1, 0, 0, 0, 0, -1]) == "coronal"
    c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    assert plane_of([1, 0, 0, 0, c, s]) == "axial"  # a tilted axial block
    h = np.sqrt(0.5)
    assert plane_of([h, h, 0, 0, 0, -1]) == "oblique"  # 45 degrees between sagittal, coronal
    assert weighting_of(600, 12, None) == "T1"
    assert weighting_of(3500, 100, None) == "T2"
    assert weighting_of(4000, 50, 160) == "STIR"
    assert weighting_of(2000, 100, 2000) == "T2"  # a long inversion (FLAIR) is no STIR
    assert weighting_of(2500, 20, None) is None  # proton density: inconclusive
    assert weighting_of(2000, 10, 800) is None  # T1-FLAIR: inconclusive
    assert weighting_of(None, 12, None) is None
    assert weighting_of(600, None, None) is None


def test_canal_contrast_sign_on_a_drawn_slice():
    """A vertical band brighter (T2) or darker (T1) than the columns around it, whichever
    image axis runs superior-inferior."""
    img = np.full((120, 120), 0.4)
    img[:, 40:52] = 0.7  # vertebral bodies
    for csf, sign in ((1.0, 1), (0.1, -1)):
        slice_ = img.copy()
        slice_[:, 56:62] = csf
        sagittal = [0, 1, 0, 0, 0, -1]  # rows run inferior
        assert np.sign(canal_contrast(slice_, sagittal, (2.0, 2.0))) == sign
        transposed = [0, 0, -1, 0, 1, 0]  # columns run inferior
        assert np.sign(canal_contrast(slice_.T, transposed, (2.0, 2.0))) == sign
    with pytest.raises(ValueError, match="blank"):
        canal_contrast(np.zeros((50, 50)), [0, 1, 0, 0, 0, -1], (2.0, 2.0))


def _study(root: Path, split: str = "train", index: int = 0) -> Path:
    return sorted((root / f"{split}_images").iterdir())[index]


def _series_of(tiny_dataset: Path, study: Path, series_type: str) -> list[int]:
    csv = "train" if study.parent.name == "train_images" else "test"
    truth = pd.read_csv(tiny_dataset / f"{csv}_series_descriptions.csv")
    mine = truth[(truth["study_id"] == int(study.name))]
    return mine.loc[mine["series_description"] == series_type, "series_id"].tolist()


def _full_study(tiny_dataset: Path, root: Path) -> Path:
    """A study of ``root`` with all three series types."""
    for split in SPLITS:
        for study in sorted((root / f"{split}_images").iterdir()):
            if all(_series_of(tiny_dataset, study, t) for t in vocab.SERIES_TYPES):
                return study
    raise AssertionError("no study with all three series types")


def test_override_wins_and_unknown_types_are_named(tiny_dataset, no_description, no_pixels):
    study = _full_study(tiny_dataset, no_description)
    (t1,) = _series_of(tiny_dataset, study, vocab.SAGITTAL_T1)
    (t2,) = _series_of(tiny_dataset, study, vocab.SAGITTAL_T2)
    result = route_study(study, {t1: "sagittal_t2"})
    row = result.series.set_index("series_id").loc[t1]
    assert (row["series_description"], row["basis"]) == (vocab.SAGITTAL_T2, "override")
    assert f"study {study.name}: no series routed to {vocab.SAGITTAL_T1}" in result.warnings
    both = f"series {min(t1, t2)} and {max(t1, t2)}"
    assert f"study {study.name}: {both} all routed to {vocab.SAGITTAL_T2}" in result.warnings
    # an override also wins over a description
    described = _full_study(tiny_dataset, tiny_dataset)
    (axial, *_) = _series_of(tiny_dataset, described, vocab.AXIAL_T2)
    routed = route_study(described, {axial: "Sagittal T1"}).series.set_index("series_id")
    assert routed.loc[axial, "basis"] == "override"
    with pytest.raises(ConfigError, match=rf"series {t1}: unknown series type 'Coronal T2'"):
        route_study(study, {t1: "Coronal T2"})
    with pytest.raises(ConfigError, match=r"series \[123\]: no such series folder"):
        route_studies(study.parent, {123: vocab.AXIAL_T2})


def test_coronal_and_oblique_series_are_not_routed(tiny_dataset, tmp_path, no_pixels):
    study = _full_study(tiny_dataset, tiny_dataset)
    (t1,) = _series_of(tiny_dataset, study, vocab.SAGITTAL_T1)
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    h = np.sqrt(0.5)
    for orientation, reason in (
        ([1.0, 0.0, 0.0, 0.0, 0.0, -1.0], "coronal plane"),
        ([h, h, 0.0, 0.0, 0.0, -1.0], "oblique plane"),
    ):
        shutil.rmtree(copy / str(t1))
        _rewrite(
            study / str(t1),
            copy / str(t1),
            drop=("SeriesDescription",),
            ImageOrientationPatient=orientation,
        )
        result = route_study(copy)
        row = result.series.set_index("series_id").loc[t1]
        assert (row["series_description"], row["basis"], row["reason"]) == (
            "",
            "unroutable",
            reason,
        )
        assert f"study {study.name}: series {t1} not routed ({reason})" in result.warnings
        assert f"study {study.name}: no series routed to {vocab.SAGITTAL_T1}" in result.warnings
        assert t1 not in set(result.table()["series_id"])


def test_a_study_missing_a_type_is_warned(tiny_dataset, no_description, tmp_path):
    study = _full_study(tiny_dataset, no_description)
    (t2,) = _series_of(tiny_dataset, study, vocab.SAGITTAL_T2)
    series = [d for d in sorted(study.iterdir()) if d.name != str(t2)]
    result = route_study(series)  # a list of series folders; the study id from their parent
    assert set(result.series["study_id"]) == {int(study.name)}
    assert result.warnings == [f"study {study.name}: no series routed to {vocab.SAGITTAL_T2}"]
    assert route_study(series, study_id=5).warnings == [
        f"study 5: no series routed to {vocab.SAGITTAL_T2}"
    ]


def test_bad_folders_are_named(tmp_path):
    (tmp_path / "images" / "12" / "notanid").mkdir(parents=True)
    with pytest.raises(DataError, match="notanid: a series folder must be named"):
        route_studies(tmp_path / "images")
    with pytest.raises(DataError, match="images directory not found"):
        route_studies(tmp_path / "missing")
    empty = tmp_path / "images" / "12" / "34"
    empty.mkdir()
    assert route_series(empty).reason == "no .dcm files"
    (empty / "1.dcm").write_text("not dicom")
    assert route_series(empty).reason == "none of its 1 files is readable DICOM"
    assert route_series(empty, headers=[]).reason == "no readable DICOM files"


def test_reasons_and_warnings_hold_no_identifiers(
    tiny_dataset, no_description, no_header_hint, tmp_path
):
    identifiers = set(header_identifiers(tiny_dataset))
    for f in sorted(tiny_dataset.glob("*_images/*/*/*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        identifiers |= {str(ds[t].value) for t in UID_AND_DATE_TAGS if t in ds}
    # a description that is not a type (with a name in it) must not be quoted either
    study = _full_study(tiny_dataset, tiny_dataset)
    named = tmp_path / study.name
    _rewrite(study, named, SeriesDescription="Sagittal T1 Doe^Jane 20240101")
    texts = []
    for root in (tiny_dataset, no_description, no_header_hint):
        for split in SPLITS:
            result = route_studies(root / f"{split}_images")
            texts += list(result.series["reason"]) + result.warnings
    result = route_study(named)
    texts += list(result.series["reason"]) + result.warnings
    assert len(texts) > 100
    for text in texts:
        for ident in identifiers:
            assert ident not in text, (ident, text)
        assert "Doe" not in text and "2024" not in text, text


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"images": None, "series": None, "series_type": None} | kw)


def test_predict_series_table_from_the_csv_or_routed(tiny_dataset, no_description, capsys):
    images = no_description / "test_images"
    csv = tiny_dataset / "test_series_descriptions.csv"
    from_csv = predict_series_table(_args(images=str(images), series=str(csv)))
    assert capsys.readouterr().out == ""
    routed = predict_series_table(_args(images=str(images)))
    assert list(routed.columns) == list(vocab.SERIES_CSV_HEADER)
    assert routed.dtypes.to_dict() == from_csv.dtypes.to_dict()
    key = ["study_id", "series_id"]
    pd.testing.assert_frame_equal(
        routed.sort_values(key, ignore_index=True), from_csv.sort_values(key, ignore_index=True)
    )
    lines = capsys.readouterr().out.splitlines()
    per_series = [line for line in lines if not line.startswith("routing warning")]
    assert len(per_series) == len(routed)
    first = routed.iloc[0]
    assert per_series[0].startswith(
        f"study {first.study_id} series {first.series_id}: {first.series_description} (timing: "
    )
    # an override, by slug
    series_id = int(routed.iloc[0]["series_id"])
    overridden = predict_series_table(
        _args(images=str(images), series_type=[f"{series_id}=axial_t2"])
    )
    assert overridden.set_index("series_id").loc[series_id, "series_description"] == "Axial T2"
    assert f"series {series_id}: Axial T2 (override: set by the caller)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--series-type overrides the routing"):
        predict_series_table(
            _args(images=str(images), series=str(csv), series_type=[f"{series_id}=axial_t2"])
        )


def test_series_type_options_are_checked():
    assert parse_series_types(["12=Sagittal T1", " 13 =axial_t2"]) == {
        12: "Sagittal T1",
        13: "axial_t2",
    }
    for bad in ("12", "x=Axial T2", "12=", "-1=Axial T2"):
        with pytest.raises(ConfigError, match="expected SERIES_ID=TYPE"):
            parse_series_types([bad])
    with pytest.raises(ConfigError, match="series 12 given twice"):
        parse_series_types(["12=Axial T2", "12=Sagittal T1"])


def test_predict_without_series_grades_as_with_the_csv(
    tiny_dataset, tiny_ingest, no_header_hint, tmp_path, capsys
):
    """`spinegrade predict` on images without SeriesDescription or timing tags, without
    --series, writes the submission it writes from the CSV on the original images."""

    from spinegrade.cli.main import main as spinegrade_main

    write_bundle(tmp_path, tiny_ingest)
    from_csv, routed = tmp_path / "csv.csv", tmp_path / "routed.csv"
    assert spinegrade_main(predict_args(tiny_dataset, tmp_path, out=str(from_csv))) == 0
    capsys.readouterr()
    images = str(no_header_hint / "test_images")
    args = predict_args(tiny_dataset, tmp_path, out=str(routed), images=images)
    args.remove("--series")
    args.remove(str(tiny_dataset / "test_series_descriptions.csv"))
    assert spinegrade_main(args) == 0
    out = capsys.readouterr().out
    n_series = len(pd.read_csv(tiny_dataset / "test_series_descriptions.csv"))
    assert out.count("(image: sagittal plane") + out.count("(plane: axial plane") == n_series
    pd.testing.assert_frame_equal(pd.read_csv(from_csv), pd.read_csv(routed))
