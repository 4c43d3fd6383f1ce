"""convert-dicom: volumes + geometry for every needed series, no identifiers, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import assert_no_identifiers, header_identifiers

from spinegrade.core.errors import DicomError
from spinegrade.data.convert import convert_all


def test_every_needed_series_converted_with_geometry(tiny_ingest, tiny_volumes):
    out, report = tiny_volumes
    needed = tiny_ingest.series[tiny_ingest.series["needed"]]
    assert report["series"] == report["series_converted"] == len(needed)
    slices = pd.read_csv(out / "slices.csv")
    for r in needed.itertuples():
        geom = json.loads((out / str(r.study_id) / str(r.series_id) / "geometry.json").read_text())
        assert geom["series_description"] == r.series_description
        n = 0
        for st in geom["stacks"]:
            vol = np.load(out / str(r.study_id) / str(r.series_id) / st["file"])
            assert list(vol.shape) == st["shape"]
            assert len(st["positions"]) == len(st["instance_numbers"]) == vol.shape[0]
            depth = np.array(st["positions"]) @ np.array(st["normal"])
            assert np.all(np.diff(depth) > 0)
            n += vol.shape[0]
        assert n == r.n_instances
        mine = slices[slices["series_id"] == r.series_id]
        assert sorted(mine["instance_number"]) == sorted(
            int(p.stem)
            for p in (
                tiny_ingest.root / f"{r.split}_images" / str(r.study_id) / str(r.series_id)
            ).glob("*.dcm")
        )


def test_labelled_instances_map_to_their_slice(tiny_ingest, tiny_volumes):
    """The slice a label's instance number maps to holds that instance's pixels."""
    import pydicom

    out, _ = tiny_volumes
    slices = pd.read_csv(out / "slices.csv")
    labels = tiny_ingest.labels.dropna(subset=["series_id"]).head(30)
    for r in labels.itertuples():
        s = slices[
            (slices["series_id"] == r.series_id) & (slices["instance_number"] == r.instance_number)
        ].iloc[0]
        vol = np.load(
            out / str(r.study_id) / str(r.series_id) / f"stack{s.stack}.npy", mmap_mode="r"
        )
        dcm = pydicom.dcmread(
            tiny_ingest.root
            / "train_images"
            / str(r.study_id)
            / str(r.series_id)
            / f"{r.instance_number}.dcm"
        )
        np.testing.assert_array_equal(vol[s.slice], dcm.pixel_array)


def test_no_patient_identifier_in_any_output(tiny_ingest, tiny_volumes, tmp_path):
    out, report = tiny_volumes
    identifiers = header_identifiers(tiny_ingest.root)
    assert any(i.startswith("PID") for i in identifiers)  # the generator wrote some
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert_no_identifiers(
        [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "report.json"], identifiers
    )


def test_parallel_output_identical_to_serial(tiny_ingest, tiny_volumes, tmp_path):
    out, _ = tiny_volumes
    par = tmp_path / "par"
    convert_all(tiny_ingest.series, tiny_ingest.root, par, workers=2)
    serial = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert serial == sorted(p.relative_to(par) for p in par.rglob("*") if p.is_file())
    for rel in serial:
        assert (out / rel).read_bytes() == (par / rel).read_bytes(), rel


def _corrupt_copy(tiny_ingest, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_ingest.root, root)
    r = tiny_ingest.series[tiny_ingest.series["needed"]].iloc[0]
    victim = sorted(
        (root / f"{r.split}_images" / str(r.study_id) / str(r.series_id)).glob("*.dcm")
    )[1]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    return root, victim


def test_corrupt_file_error_names_it_and_leaves_no_output(tiny_ingest, tmp_path):
    root, victim = _corrupt_copy(tiny_ingest, tmp_path)
    with pytest.raises(DicomError, match=victim.name) as info:
        convert_all(tiny_ingest.series, root, tmp_path / "vol", workers=1)
    assert str(victim.parent) in str(info.value)
    assert not (tmp_path / "vol").exists()
    assert not list(tmp_path.glob(".vol*"))  # no half-written temporary left behind


def test_corrupt_file_skipped_and_reported(tiny_ingest, tmp_path):
    root, victim = _corrupt_copy(tiny_ingest, tmp_path)
    report = convert_all(tiny_ingest.series, root, tmp_path / "vol", workers=1, on_error="skip")
    assert report["skipped_files"] == 1
    skipped = pd.read_csv(tmp_path / "vol" / "skipped.csv")
    assert victim.name in skipped["error"].iloc[0]
    slices = pd.read_csv(tmp_path / "vol" / "slices.csv")
    assert int(victim.stem) not in set(
        slices.loc[slices["series_id"] == int(victim.parent.name), "instance_number"]
    )
