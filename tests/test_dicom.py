"""DICOM reading: position sorting, stacks by orientation, compressed syntaxes, bad files."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLossless, JPEGLSLossless, RLELossless

from spinegrade.core.errors import DicomError
from spinegrade.data.dicom import read_series, read_slice
from spinegrade.data.geometry import slice_normal


def _axial_slice(z: float, inst: int, rows: int = 12, cols: int = 10, tilt_deg: float = 0.0):
    """A minimal valid MR slice whose pixel values encode its z position."""
    from spinegrade.synthetic.series import SeriesPlan, SliceSpec, _dataset

    phi = np.deg2rad(tilt_deg)
    iop = np.array([1.0, 0.0, 0.0, 0.0, np.cos(phi), np.sin(phi)])
    normal = slice_normal(iop)
    spec = SliceSpec(
        ipp=np.array([-5.0, -5.0, 0.0]) + z * normal,
        iop=iop,
        spacing=(0.8, 0.8),
        shape=(rows, cols),
    )
    pixels = np.full((rows, cols), 1000 + int(round(z * 10)), dtype=np.uint16)
    pixels[0, 0] = inst  # marks which file a slice came from
    plan = SeriesPlan(series_id=99, description="Axial T2", slices=[spec], thickness=3.0)
    identity = {
        "name": "Doe^Jane",
        "id": "PID1",
        "birth": "19600101",
        "sex": "F",
        "institution": "Synthetic General Hospital",
    }
    return _dataset(spec, pixels, plan, inst, 1234, "1.2.3", identity, omit_spacing=False)


def _write_series(path: Path, zs, insts, names=None, tilt=0.0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, (z, inst) in enumerate(zip(zs, insts, strict=True)):
        name = names[i] if names else f"{inst}.dcm"
        _axial_slice(z, inst, tilt_deg=tilt).save_as(path / name, enforce_file_format=True)


def test_slices_sorted_by_position_not_instance(tmp_path):
    zs = [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    # Instance numbers start above 1, skip, and run against position; files in random order.
    insts = [57, 50, 49, 44, 43, 31]
    order = list(range(len(zs)))
    random.Random(3).shuffle(order)
    _write_series(tmp_path / "s", [zs[i] for i in order], [insts[i] for i in order])
    (stack,) = read_series(tmp_path / "s")
    depth = stack.positions @ stack.normal
    assert np.all(np.diff(depth) > 0)
    np.testing.assert_array_equal(stack.instance_numbers, insts)
    np.testing.assert_array_equal(stack.pixels[:, 0, 0], insts)  # pixels travel with geometry
    np.testing.assert_allclose(stack.pixels[:, 5, 5], [1000 + 10 * z for z in zs])
    assert stack.slice_spacing == pytest.approx(4.0)


def test_axial_series_split_into_stacks_by_orientation(tmp_path):
    _write_series(tmp_path / "s", [0.0, 3.0, 6.0], [1, 2, 3], tilt=0.0)
    _write_series(tmp_path / "s", [40.0, 43.0], [4, 5], tilt=8.0)
    stacks = read_series(tmp_path / "s")
    assert len(stacks) == 2
    by_size = sorted(stacks, key=lambda s: len(s.instance_numbers))
    np.testing.assert_array_equal(by_size[0].instance_numbers, [4, 5])
    np.testing.assert_array_equal(by_size[1].instance_numbers, [1, 2, 3])
    assert not np.allclose(by_size[0].orientation, by_size[1].orientation)


def test_slice_spacing_derived_from_positions_when_tags_absent(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    for inst, z in enumerate([0.0, 2.5, 5.0], start=1):
        ds = _axial_slice(z, inst)
        del ds.SliceThickness
        del ds.SpacingBetweenSlices
        ds.save_as(path / f"{inst}.dcm", enforce_file_format=True)
    (stack,) = read_series(path)
    assert stack.slice_spacing == pytest.approx(2.5)


def _compress_ljpeg(ds: pydicom.Dataset) -> None:
    frame = imagecodecs.ljpeg_encode(ds.pixel_array, bitspersample=16)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless


@pytest.mark.parametrize(
    "syntax",
    [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLossless],
    ids=["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"],
)
def test_compressed_transfer_syntaxes_decode_exactly(tmp_path, syntax):
    ds = _axial_slice(1.0, 3, rows=64, cols=48)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, size=(64, 48), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    if syntax == JPEGLossless:
        _compress_ljpeg(ds)
    else:
        ds.compress(syntax, pixels)
    ds.save_as(tmp_path / "3.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "3.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_slice(tmp_path / "3.dcm").pixels, pixels)


def test_truncated_file_error_names_it(tmp_path):
    _write_series(tmp_path / "s", [0.0, 4.0], [1, 2])
    bad = tmp_path / "s" / "2.dcm"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DicomError, match=r"2\.dcm"):
        read_series(tmp_path / "s")


def test_not_dicom_error_names_it(tmp_path):
    _write_series(tmp_path / "s", [0.0], [1])
    (tmp_path / "s" / "7.dcm").write_bytes(b"this is not a dicom file")
    with pytest.raises(DicomError, match=r"7\.dcm.*not a readable DICOM"):
        read_series(tmp_path / "s")


def test_missing_geometry_error_names_tag(tmp_path):
    ds = _axial_slice(0.0, 1)
    del ds.ImageOrientationPatient
    ds.save_as(tmp_path / "1.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="ImageOrientationPatient"):
        read_slice(tmp_path / "1.dcm")


def test_skip_callback_keeps_the_readable_slices(tmp_path):
    _write_series(tmp_path / "s", [0.0, 4.0, 8.0], [1, 2, 3])
    (tmp_path / "s" / "2.dcm").write_bytes(b"\0" * 10)
    errors: list[DicomError] = []
    (stack,) = read_series(tmp_path / "s", on_error=errors.append)
    np.testing.assert_array_equal(stack.instance_numbers, [1, 3])
    assert len(errors) == 1 and "2.dcm" in str(errors[0])


def test_generated_series_read_back(tiny_dataset):
    series_dir = next(p for p in (tiny_dataset / "train_images").glob("*/*") if p.is_dir())
    stacks = read_series(series_dir)
    files = list(series_dir.glob("*.dcm"))
    assert sum(len(s.instance_numbers) for s in stacks) == len(files)
    for s in stacks:
        assert s.pixels.dtype == np.uint16
        assert np.all(np.diff(s.positions @ s.normal) > 0)


def test_empty_series_dir_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no .dcm files"):
        read_series(tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty")


def _gradient_file(path: Path, stored: np.ndarray, photometric: str, **tags) -> Path:
    """One slice holding ``stored`` (uint16) with the given photometric interpretation."""
    ds = _axial_slice(0.0, 1, rows=stored.shape[0], cols=stored.shape[1])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.PhotometricInterpretation = photometric
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("bits", [16, 12])
def test_monochrome1_is_read_inverted(tmp_path, bits):
    top = 2**bits - 1
    gradient = np.linspace(0, top, 12 * 10).round().astype(np.uint16).reshape(12, 10)
    tags = {"BitsStored": bits, "HighBit": bits - 1}
    mono2 = read_slice(_gradient_file(tmp_path / "m2.dcm", gradient, "MONOCHROME2", **tags))
    mono1 = read_slice(_gradient_file(tmp_path / "m1.dcm", top - gradient, "MONOCHROME1", **tags))
    assert mono1.pixels.dtype == np.uint16
    np.testing.assert_array_equal(mono1.pixels, mono2.pixels)
    assert mono1.pixels[-1, -1] > mono1.pixels[0, 0]  # stored low (bottom right) is bright


def test_monochrome1_inverted_over_the_rescaled_range(tmp_path):
    stored = np.arange(120, dtype=np.uint16).reshape(12, 10)
    rescale = {"RescaleSlope": 2, "RescaleIntercept": -100}
    mono1 = read_slice(_gradient_file(tmp_path / "m1.dcm", stored, "MONOCHROME1", **rescale))
    lo, hi = -100.0, 65535 * 2 - 100.0  # the stored range 0..65535 rescaled
    np.testing.assert_array_equal(mono1.pixels, (lo + hi) - (stored * 2.0 - 100))


def test_rescale_slope_and_intercept_give_float32(tmp_path):
    stored = np.arange(120, dtype=np.uint16).reshape(12, 10) * 30
    rescale = {"RescaleSlope": 2, "RescaleIntercept": -100}
    sl = read_slice(_gradient_file(tmp_path / "r.dcm", stored, "MONOCHROME2", **rescale))
    assert sl.pixels.dtype == np.float32
    np.testing.assert_array_equal(sl.pixels, stored.astype(np.float32) * 2 - 100)


def test_no_rescale_keeps_stored_dtype_and_values(tmp_path):
    stored = np.arange(120, dtype=np.uint16).reshape(12, 10) * 500
    path = _gradient_file(tmp_path / "n.dcm", stored, "MONOCHROME2")
    assert "RescaleSlope" not in pydicom.dcmread(path)
    sl = read_slice(path)
    assert sl.pixels.dtype == np.uint16
    np.testing.assert_array_equal(sl.pixels, stored)
