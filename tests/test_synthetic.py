"""The synthetic generator: competition format, DICOM headers, determinism, contrast per
sequence, severity as continuous narrowing graded by thresholds."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pydicom
from helpers import tiny_synthetic

from spinegrade.core import vocab
from spinegrade.core.vocab import TEST_LABELS_CSV
from spinegrade.synthetic.anatomy import SliceGrid, build_anatomy, render_slice
from spinegrade.synthetic.dataset import generate_dataset
from spinegrade.synthetic.imaging import TIMING_MS, TISSUE, draw_scanner, form_image
from spinegrade.synthetic.severity import (
    CLASS_BALANCE,
    Degeneration,
    draw_degeneration,
    grade,
    read_grades,
    thresholds,
)


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


def test_dicom_timing_tags_follow_the_sequence(tiny_dataset):
    """Every series carries TR and TE (ms) in its sequence's range, the same on each of its
    files; STIR series (and only they) an InversionTime; the sagittal T2/STIR series hold both
    T2 and STIR timings across the dataset."""

    def within(ds, sequence) -> bool:
        return set(TIMING_MS[sequence]) == {k for k in TIMING_MS["STIR"] if k in ds} and all(
            lo <= float(ds[k].value) <= hi for k, (lo, hi) in TIMING_MS[sequence].items()
        )

    seen: dict[str, set[str]] = {}
    for d in sorted(tiny_dataset.glob("*_images/*/*")):
        timings = set()
        for f in sorted(d.glob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            timings.add(tuple(ds.get(k) for k in TIMING_MS["STIR"]))
        assert len(timings) == 1, d  # one acquisition per series
        allowed = {"Sagittal T1": ("T1",), "Axial T2": ("T2",)}.get(
            ds.SeriesDescription, ("T2", "STIR")
        )
        sequence = [s for s in allowed if within(ds, s)]
        assert len(sequence) == 1, (d, timings)
        seen.setdefault(ds.SeriesDescription, set()).add(sequence[0])
    assert seen == {"Sagittal T1": {"T1"}, "Sagittal T2/STIR": {"T2", "STIR"}, "Axial T2": {"T2"}}


def test_timing_leaves_the_images_as_they_were(monkeypatch):
    """The timing comes from a child generator: the series' own draws after it (its
    pixels) are those of a generator that never drew a timing."""
    import spinegrade.synthetic.imaging as imaging

    def after_scanner() -> tuple[dict, float]:
        rng = np.random.default_rng([7, 1])
        scanner = draw_scanner(rng, "Sagittal T1", 1.0, 0.04)
        return scanner.timing, rng.random()

    timing, next_draw = after_scanner()
    assert set(timing) == {"RepetitionTime", "EchoTime"}
    assert after_scanner() == (timing, next_draw)  # deterministic
    monkeypatch.setattr(imaging, "draw_timing", lambda rng, sequence: {})
    assert after_scanner() == ({}, next_draw)


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


def _degenerations(n: int, seed: int = 0) -> list[Degeneration]:
    rng = np.random.default_rng(seed)
    return [draw_degeneration(rng) for _ in range(n)]


def test_class_balance_follows_real_frequencies():
    """Grades are thresholds on the latent; over levels they give CLASS_BALANCE per group."""
    studies = _degenerations(6000)
    for group, counts in CLASS_BALANCE.items():
        draws = np.concatenate([grade(d.of(group), group).ravel() for d in studies])
        observed = np.bincount(draws, minlength=3) / len(draws)
        expected = np.array(counts) / sum(counts)
        np.testing.assert_allclose(observed, expected, atol=0.01)
        t1, t2 = thresholds(group)
        assert t1 < t2


def test_severity_peaks_low_and_correlates_within_a_level():
    studies = _degenerations(3000, seed=1)
    spinal = np.array([grade(d.spinal, "spinal") for d in studies])
    rate = (spinal > 0).mean(axis=0)
    assert rate.argmax() == 3  # L4/L5
    foraminal = np.array([d.foraminal.mean(axis=0) for d in studies])
    assert foraminal.mean(axis=0)[3:].min() > foraminal.mean(axis=0)[:3].max()
    canal = np.array([d.spinal[3] for d in studies])
    recess = np.array([d.subarticular[0, 3] for d in studies])
    assert np.corrcoef(canal, recess)[0, 1] > 0.5  # narrow together when the disc bulges


def test_reader_disagrees_only_near_thresholds():
    rng = np.random.default_rng(2)
    studies = _degenerations(1500, seed=2)
    t1, t2 = thresholds("subarticular")
    z = np.concatenate([d.subarticular.ravel() for d in studies])
    read = np.concatenate([read_grades(rng, d, "subarticular", 0.2).ravel() for d in studies])
    differ = read != grade(z, "subarticular")
    assert 0.01 < differ.mean() < 0.15
    distance = np.minimum(abs(z - t1), abs(z - t2))
    assert distance[differ].max() < 1.0  # 5 reader sd
    assert np.median(distance[differ]) < 0.25


def _axial(anatomy, z: float, spacing: float = 0.5, size: int = 480) -> SliceGrid:
    """An axial slice (3 mm thick) centred on the canal at height z."""
    ipp = np.array([anatomy.x0 - spacing * size / 2, anatomy.y0 - spacing * size / 2, z])
    return SliceGrid(ipp, np.array([1.0, 0, 0, 0, 1, 0]), (spacing, spacing), (size, size), 3.0)


def _pixel(anatomy, grid: SliceGrid, u: float, v: float) -> tuple[int, int]:
    return (
        int(round((anatomy.y0 + v - grid.ipp[1]) / grid.step_r[1])),
        int(round((anatomy.x0 + u - grid.ipp[0]) / grid.step_c[0])),
    )


def test_tissue_intensities_come_out_in_order_per_sequence():
    """Measured through the full image formation (contrast draws, bias, noise, blur), the
    tissues keep each sequence's order: T1 fat > marrow > muscle > CSF; T2 CSF > nucleus >
    marrow > muscle; STIR CSF > nucleus > muscle > fat."""
    rng = np.random.default_rng(3)
    anatomy = build_anatomy(rng, draw_degeneration(rng), difficulty=1.0)
    anatomy = dataclasses.replace(anatomy, disc_deg=np.zeros(5))  # a healthy nucleus
    k = 2
    at_body = _axial(anatomy, anatomy.disc_z[k] - anatomy.period / 2, spacing=1.0, size=240)
    at_disc = _axial(anatomy, anatomy.disc_z[k], spacing=1.0, size=240)
    spots = {  # tissue: (grid, u, v)
        "fat": (at_body, 0.0, 80.0),
        "marrow": (at_body, 0.0, -26.0),
        "muscle": (at_body, 31.0, 42.0),
        "csf": (at_body, 0.0, -1.0),
        "nucleus": (at_disc, 0.0, -25.0),
    }
    orders = {
        "T1": ("fat", "marrow", "muscle", "csf"),
        "T2": ("csf", "nucleus", "marrow", "muscle"),
        "STIR": ("csf", "nucleus", "muscle", "fat"),
    }
    for sequence, order in orders.items():
        for trial in range(4):
            scanner = draw_scanner(rng, "Axial T2", 1.0, 0.04, sequence=sequence)
            images = {id(g): form_image(anatomy, g, scanner, rng) for g in (at_body, at_disc)}
            value = {}
            for tissue, (g, u, v) in spots.items():
                r, c = _pixel(anatomy, g, u, v)
                value[tissue] = images[id(g)][r - 1 : r + 2, c - 1 : c + 2].mean()
            measured = [value[t] for t in order]
            assert measured == sorted(measured, reverse=True), (sequence, trial, value)


def _areas(group: str, latents: np.ndarray) -> list[float]:
    """Bright-tissue area (mm^2, partial volume counted) of the structure ``group`` names at
    L4/L5 on a noiseless slice, as its latent degree alone varies."""
    base = draw_degeneration(np.random.default_rng(4))
    out = []
    for z in latents:
        values = {g: base.of(g).copy() for g in ("spinal", "foraminal", "subarticular")}
        values[group][..., 3] = z
        deg = Degeneration(
            spinal=values["spinal"][0],
            foraminal=values["foraminal"],
            subarticular=values["subarticular"],
            disc=base.disc,
        )
        anatomy = build_anatomy(np.random.default_rng(5), deg, difficulty=0.0)
        if group == "foraminal":  # sagittal T1 through the left foramen: fat
            centre = anatomy.foramen_point(0, 3)
            n = 160
            ipp = centre + np.array([0.0, -0.25 * n / 2, 0.25 * n / 2])
            grid = SliceGrid(ipp, np.array([0.0, 1, 0, 0, 0, -1]), (0.25, 0.25), (n, n), 3.6)
            img = render_slice(anatomy, grid, TISSUE["T1"])
            bright = np.clip((img - TISSUE["T1"]["bone"]) / (TISSUE["T1"]["fat"] - 0.55), 0, 1)
        else:  # axial T2 at the disc: CSF of the canal (spinal) or the left recess
            grid = _axial(anatomy, anatomy.disc_z[3], spacing=0.25, size=120)
            img = render_slice(anatomy, grid, TISSUE["T2"])
            bright = np.clip((img - 0.5) / 0.5, 0, 1)
            cols = np.arange(120) * 0.25 - 15.0  # u of each column
            bright = bright[:, cols > 4.0] if group == "subarticular" else bright
        out.append(float(bright.sum()) * grid.pixel**2)
    return out


def test_structure_area_decreases_with_latent_severity():
    """Canal, recess and foramen each shrink strictly as their own latent grows, and a
    Severe level is well below a typical Normal/Mild one."""
    for group in ("spinal", "subarticular", "foraminal"):
        t1, t2 = thresholds(group)
        latents = np.linspace(t1 - 2.0, t2 + 1.0, 7)
        areas = _areas(group, latents)
        assert all(np.diff(areas) < 0), (group, areas)
        assert areas[-1] < 0.6 * areas[0], (group, areas)


def test_difficulty_scales_noise_and_variation_monotonically():
    noise, spread = [], []
    for d in (0.0, 0.5, 1.0, 2.0):
        scanners = [draw_scanner(np.random.default_rng(i), "Axial T2", d, 0.04) for i in range(30)]
        noise.append(np.mean([s.noise for s in scanners]))
        spread.append(np.std([s.contrast["csf"] / s.contrast["muscle"] for s in scanners]))
    assert noise[0] == 0 and all(np.diff(noise) > 0)
    assert spread[0] < 1e-9 and all(np.diff(spread) > 0)
