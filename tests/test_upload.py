"""Unpacking an uploaded study's zip (data/upload.py): good studies in any layout become
the test_images tree; every bad zip is refused with its status and a message naming the
entry, leaving nothing behind and writing nothing outside the destination."""

from __future__ import annotations

import asyncio
import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from spinegrade.data import routing, upload
from spinegrade.data.dicom import read_series
from spinegrade.data.routing import route_study
from spinegrade.data.upload import (
    Unpacked,
    UploadError,
    UploadLimits,
    capped_async,
    copy_capped,
    unpack_study,
)
from spinegrade.inference.studies import read_study

# Header values that must never be returned or raised (StudyID is left out: the synthetic
# studies' folder names are their ids, and a zip's folder names are the uploader's own).
SECRET_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


@pytest.fixture(scope="module")
def study(tiny_dataset) -> Path:
    """One synthetic test study: test_images/{study}/{series}/*.dcm (read-only)."""
    return sorted((tiny_dataset / "test_images").iterdir())[0]


@pytest.fixture(scope="module")
def secrets(study) -> set[str]:
    found = set()
    for f in study.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        found |= {str(ds[t].value) for t in SECRET_TAGS if t in ds}
    return found


def study_entries(study: Path, top: str = "mystudy") -> list[tuple[str, bytes]]:
    """The study's files under flat, shuffled names that say nothing of their series."""
    files = sorted(study.rglob("*.dcm"))
    order = np.random.default_rng(0).permutation(len(files))
    return [(f"{top}/DICOM/IM{k:05d}", files[i].read_bytes()) for k, i in enumerate(order)]


def write_zip(path: Path, entries, method=zipfile.ZIP_DEFLATED) -> Path:
    """A zip of (name or ZipInfo, bytes) entries."""
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def patch_central(path: Path, name: str, offset: int, fmt: str, value: int) -> Path:
    """Overwrite a field of ``name``'s central directory record (where Python's zipfile
    reads sizes and flags): offset 8 the flags, 24 the uncompressed size."""
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at + 1)) != -1:
        (length,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + length] == name.encode():
            struct.pack_into(fmt, data, at + offset, value)
            path.write_bytes(bytes(data))
            return path
    raise AssertionError(f"no central record for {name}")


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def small_dicom(
    syntax=ExplicitVRLittleEndian, pixels: bool = True, shape=(32, 32), series="1.2.3.4"
) -> Dataset:
    """A one-slice MR dataset carrying identifiers; ``pixels=False`` leaves PixelData out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Secret^Person"
    ds.PatientID = "PIDSECRET42"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixels:
        values = np.random.default_rng(1).integers(0, 4000, shape, dtype=np.uint16)
        ds.PixelData = values.tobytes()
    return ds


def listing(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def assert_clean(*texts: str, secrets: set[str]) -> None:
    for text in texts:
        for secret in secrets | {"Secret^Person", "PIDSECRET42"}:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def refused(source, tmp_path: Path, status: int, *words: str, **limits) -> UploadError:
    """Unpack ``source`` expecting UploadError ``status`` with ``words`` in its message;
    check that the destination is left empty and nothing appeared beside it."""
    dest = tmp_path / "refused"
    dest.mkdir(exist_ok=True)
    before = listing(tmp_path)
    with pytest.raises(UploadError) as info:
        unpack_study(source, dest, UploadLimits(**limits))
    err = info.value
    assert err.status == status, err.message
    for word in words:
        assert word in err.message, err.message
    assert list(dest.iterdir()) == []
    assert listing(tmp_path) == before
    return err


def originals(study: Path) -> list[Path]:
    """The study's series folders in SeriesNumber order (the synthetic SeriesNumber is the
    series id modulo 100000)."""
    return sorted(study.iterdir(), key=lambda d: int(d.name) % 100000)


def test_a_study_in_any_layout_becomes_the_test_images_tree(study, secrets, tmp_path, monkeypatch):
    entries = study_entries(study, top="Jane Doe (knee?)")
    entries += [("Jane Doe (knee?)/notes.txt", b"hello"), ("__MACOSX/._IM00000", b"\0" * 300)]
    source = write_zip(tmp_path / "study.zip", entries)
    dest = tmp_path / "images" / "1"
    dest.mkdir(parents=True)

    got = unpack_study(source, dest)

    assert got.study_name == "Jane_Doe__knee__"
    assert got.ignored == ["Jane Doe (knee?)/notes.txt", "__MACOSX/._IM00000"]
    assert got.rejected == []
    series = originals(study)
    assert sorted(got.series) == list(range(1, len(series) + 1))
    assert sorted(p.name for p in dest.iterdir()) == sorted(str(k) for k in got.series)
    for k, orig in enumerate(series, start=1):
        files = got.series[k]
        assert [p.name for p in files] == [f"{n}.dcm" for n in range(1, len(files) + 1)]
        assert sorted(dest.joinpath(str(k)).iterdir()) == sorted(files)
        want, have = read_series(orig), read_series(dest / str(k))
        assert len(want) == len(have)
        for a, b in zip(want, have, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
            np.testing.assert_array_equal(a.positions, b.positions)
        # each written file is byte for byte the entry it names
        by_name = dict(entries)
        assert all(p.read_bytes() == by_name[got.sources[p]] for p in files)

    # the routing tags read while unpacking are those routing reads from the placed files
    assert {k: [h.path for h in hs] for k, hs in got.headers.items()} == got.series
    with monkeypatch.context() as patched:
        patched.setattr(routing, "_read_header", lambda path: pytest.fail(f"{path} read again"))
        given = route_study(dest, study_id=1, headers=got.headers)
    read = route_study(dest, study_id=1)
    pd.testing.assert_frame_equal(given.series, read.series)
    assert given.warnings == read.warnings

    # the predict path reads it as a study of the test_images tree
    table = pd.DataFrame({"series_id": sorted(got.series), "series_description": "any"})
    warnings: list[str] = []
    vols = read_study(dest.parent, 1, table, "raise", warnings.append)
    assert warnings == []
    assert sum(len(v) for v in vols.stacks.values()) >= len(series)
    assert_clean(repr(got), secrets=secrets)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["IM1", "IM2"], None),  # files at the top
        (["a/IM1", "b/IM2"], None),  # two top folders
        (["./s-1/x/IM1", "s-1/IM2"], "s-1"),
        (["s1/", "s1/IM1"], "s1"),
    ],
)
def test_the_study_name_is_the_single_top_folder(study, tmp_path, names, expected):
    data = next(study.rglob("*.dcm")).read_bytes()
    entries = [(n, b"" if n.endswith("/") else data) for n in names]
    dest = tmp_path / "dest"
    dest.mkdir()
    got = unpack_study(write_zip(tmp_path / "s.zip", entries), dest)
    assert got.study_name == expected


def test_copy_capped_stops_before_the_chunk_past_the_limit():
    consumed = []

    def chunks():
        for k in range(100):
            consumed.append(k)
            yield b"x" * 10

    out = io.BytesIO()
    assert copy_capped(iter([b"ab", b"cd"]), out, 4) == 4
    out = io.BytesIO()
    with pytest.raises(UploadError) as info:
        copy_capped(chunks(), out, 35)
    assert info.value.status == 413
    assert "over the limit of 35 bytes" in info.value.message
    assert len(out.getvalue()) == 30 and consumed == [0, 1, 2, 3]

    async def body():
        for _ in range(100):
            yield b"y" * 1024

    async def read(limit: int) -> int:
        return sum([len(chunk) async for chunk in capped_async(body(), limit)])

    with pytest.raises(UploadError, match="the upload is over the limit of 2 KiB"):
        asyncio.run(read(2048))
    assert asyncio.run(read(1 << 20)) == 100 * 1024


def test_not_a_zip(tmp_path):
    text = tmp_path / "study.zip"
    text.write_text("these are not the files you are looking for\n" * 10)
    refused(text, tmp_path, 400, "not a zip file")
    refused(io.BytesIO(b""), tmp_path, 400, "not a zip file")


def test_an_empty_zip_or_one_without_dicom(tmp_path):
    refused(write_zip(tmp_path / "a.zip", []), tmp_path, 400, "empty")
    refused(write_zip(tmp_path / "b.zip", [("s/", b""), ("s/t/", b"")]), tmp_path, 400, "empty")
    entries = [("s/readme.txt", b"hi"), ("s/x.dcm", b"\0" * 200)]
    refused(write_zip(tmp_path / "c.zip", entries), tmp_path, 422, "no DICOM files", "2 files")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil", "'..'"),
        ("s/../../evil", "'..'"),
        ("s\\..\\..\\evil", "'..'"),
        ("/abs", "absolute path"),
        ("\\\\server\\share\\x", "absolute path"),
        ("C:\\x", "drive letter"),
        ("c:x", "drive letter"),
    ],
)
def test_entries_that_name_a_path_outside(study, tmp_path, name, problem):
    entries = study_entries(study)[:3] + [(name, b"owned")]
    err = refused(write_zip(tmp_path / "s.zip", entries), tmp_path, 400, problem)
    assert repr(name) in err.message
    assert not (tmp_path.parent / "evil").exists() and not Path("/abs").exists()


def test_a_symbolic_link_entry(study, tmp_path):
    link = zipfile.ZipInfo("s/link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = study_entries(study)[:3] + [(link, b"/etc/passwd")]
    refused(write_zip(tmp_path / "s.zip", entries), tmp_path, 400, "'s/link' is a symbolic link")


def test_an_encrypted_entry(study, tmp_path):
    entries = study_entries(study)[:3] + [("s/secret.dcm", b"\0" * 64)]
    source = patch_central(write_zip(tmp_path / "s.zip", entries), "s/secret.dcm", 8, "<H", 0x1)
    refused(source, tmp_path, 400, "'s/secret.dcm' is encrypted")


def test_an_upload_or_entry_count_over_the_limits(study, tmp_path):
    source = write_zip(tmp_path / "s.zip", study_entries(study)[:5])
    refused(source, tmp_path, 413, "over the limit of 1 KiB", max_upload_bytes=1024)
    refused(source, tmp_path, 413, "5 entries, over the limit of 4", max_files=4)


def test_a_declared_total_over_the_limit(study, tmp_path):
    noise = np.random.default_rng(2).bytes(3 << 20)  # incompressible: no ratio problem
    entries = study_entries(study)[:3] + [("s/noise.bin", noise)]
    refused(
        write_zip(tmp_path / "s.zip", entries),
        tmp_path,
        413,
        "declares",
        "over the limit of 2 MiB",
        max_total_bytes=2 << 20,
    )


def test_an_absurd_compression_ratio(study, tmp_path):
    entries = study_entries(study)[:3] + [("s/blank.bin", b"\0" * (4 << 20))]
    source = write_zip(tmp_path / "s.zip", entries)
    refused(source, tmp_path, 413, "'s/blank.bin' decompresses to over 200 times")
    # a small blank entry is no bomb: within ratio_grace_bytes the ratio is not checked
    small = write_zip(tmp_path / "t.zip", entries[:3] + [("s/blank.bin", b"\0" * 4096)])
    dest = tmp_path / "ok"
    dest.mkdir()
    assert unpack_study(small, dest).ignored == ["s/blank.bin"]


def test_a_size_header_that_lies(study, tmp_path):
    """Declared 1000 bytes, 10 MiB inside. Python's zipfile stops at the declared size, so
    the entry ends early, its CRC fails and it is refused as corrupt."""
    entries = study_entries(study)[:3]
    payload = entries[0][1] + b"\0" * (10 << 20)
    source = write_zip(tmp_path / "s.zip", [*entries[1:], ("s/bomb.dcm", payload)])
    patch_central(source, "s/bomb.dcm", 24, "<I", 1000)
    refused(source, tmp_path, 400, "'s/bomb.dcm' is corrupt", max_total_bytes=1 << 20)


def test_decompressed_bytes_are_capped_whatever_the_reader_says(study, tmp_path, monkeypatch):
    """A zip reader that went on past the declared size (as some do, and as the headers
    may lie) is stopped at the total cap while the entry streams."""
    entries = study_entries(study)[:3]
    declared = sum(len(d) for _, d in entries)
    read = zipfile.ZipExtFile.read

    def endless(self, n=-1):
        return read(self, n) or b"\0" * min(n, 1 << 16)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", endless)
    source = write_zip(tmp_path / "s.zip", entries)
    limit = declared + (1 << 20)
    refused(
        source,
        tmp_path,
        413,
        "unpacked study",
        "over the limit",
        max_total_bytes=limit,
        max_ratio=1e9,
    )
    # and the actual compression ratio is checked as the bytes come
    refused(source, tmp_path, 413, "decompresses to over 200 times", max_total_bytes=1 << 30)


def test_dicom_without_pixels_or_with_an_unreadable_syntax(study, secrets, tmp_path, monkeypatch):
    good = study_entries(study)
    no_pixels = dicom_bytes(small_dicom(pixels=False))
    j2k = small_dicom()
    j2k.compress(JPEG2000Lossless)
    unknown = dicom_bytes(small_dicom()).replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0")
    fake_rle = dicom_bytes(small_dicom()).replace(
        b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"
    )
    no_series = small_dicom()
    del no_series.SeriesInstanceUID
    plain = dicom_bytes(small_dicom())
    bad = {
        "mystudy/x/nopix": (no_pixels, "no pixel data"),
        "mystudy/x/j2k": (dicom_bytes(j2k), "unsupported transfer syntax JPEG 2000"),
        "mystudy/x/unknown": (unknown, "unknown transfer syntax"),
        "mystudy/x/fake-rle": (
            fake_rle,
            "pixel data not encapsulated, against its transfer syntax RLE",
        ),
        "mystudy/x/noseries": (dicom_bytes(no_series), "no SeriesInstanceUID"),
        "mystudy/x/cut-meta": (plain[:200], "no transfer syntax"),
        "mystudy/x/cut-pixels": (plain[:-1000], "pixel data cut short"),
    }
    # this machine decodes JPEG 2000 (pylibjpeg-openjpeg): act as one without the plugin
    monkeypatch.setattr(
        upload, "decodable", lambda s, real=upload.decodable: s != JPEG2000Lossless and real(s)
    )
    source = write_zip(
        tmp_path / "s.zip", good[:10] + [(n, d) for n, (d, _) in bad.items()] + good[10:]
    )
    dest = tmp_path / "dest"
    dest.mkdir()

    got = unpack_study(source, dest)

    assert [name for name, _ in got.rejected] == list(bad)
    for name, reason in got.rejected:
        assert reason.startswith(bad[name][1]), (name, reason)
    assert sum(len(v) for v in got.series.values()) == len(good)
    assert sorted(got.sources.values()) == sorted(n for n, _ in good)
    assert_clean(repr(got), secrets=secrets)

    # a zip of nothing but such files has nothing to grade
    only_bad = write_zip(tmp_path / "b.zip", [(n, d) for n, (d, _) in bad.items()])
    err = refused(only_bad, tmp_path, 422, "none of the zip's 7 DICOM files can be graded", "nopix")
    assert_clean(err.message, secrets=secrets)


def test_compressed_and_deflated_dicom_is_unpacked(tmp_path):
    rle = small_dicom(series="1.2.3.5")
    rle.compress(RLELossless)
    j2k = small_dicom(series="1.2.3.6")
    j2k.compress(JPEG2000Lossless)
    deflated = small_dicom(DeflatedExplicitVRLittleEndian, series="1.2.3.7")
    entries = [
        ("s/plain", dicom_bytes(small_dicom())),
        ("s/rle", dicom_bytes(rle)),
        ("s/j2k", dicom_bytes(j2k)),
        ("s/deflated", dicom_bytes(deflated)),
    ]
    dest = tmp_path / "dest"
    dest.mkdir()
    got = unpack_study(write_zip(tmp_path / "s.zip", entries), dest)
    assert got.rejected == [] and len(got.series) == 4
    want = small_dicom().pixel_array
    for k in got.series:
        np.testing.assert_array_equal(read_series(dest / str(k))[0].pixels[0], want)


def test_a_deflated_dicom_bomb(tmp_path):
    """A deflated DICOM dataset is inflated under the caps before pydicom reads it (pydicom
    inflates it whole in memory)."""
    bomb = small_dicom(DeflatedExplicitVRLittleEndian, shape=(2048, 2048))
    bomb.PixelData = bytes(2048 * 2048 * 2)  # 8 MiB of zeros, a few KiB deflated
    data = dicom_bytes(bomb)
    assert len(data) < 64 << 10
    source = write_zip(tmp_path / "s.zip", [("s/bomb.dcm", data)], zipfile.ZIP_STORED)
    refused(source, tmp_path, 413, "'s/bomb.dcm': its deflated DICOM data inflates to over")


def test_any_damaged_zip_is_refused_cleanly(study, tmp_path):
    """Truncated and byte-flipped zips: an UploadError or a result, never another error,
    and nothing left behind on error."""
    entries = study_entries(study)[:2] + [("mystudy/notes.txt", b"hello" * 50)]
    good = write_zip(tmp_path / "s.zip", entries).read_bytes()
    rng = np.random.default_rng(3)
    variants = [good[:n] for n in rng.integers(1, len(good), 12)]
    for at in rng.integers(0, len(good), 30):
        flipped = bytearray(good)
        flipped[at] ^= 0xFF
        variants.append(bytes(flipped))
    dest = tmp_path / "dest"
    dest.mkdir()
    outcomes = set()
    for data in variants:
        try:
            got = unpack_study(io.BytesIO(data), dest)
        except UploadError as err:
            outcomes.add(err.status)
            assert list(dest.iterdir()) == []
        else:
            assert isinstance(got, Unpacked)
            outcomes.add(200)
            for child in dest.iterdir():
                for f in child.iterdir():
                    f.unlink()
                child.rmdir()
    assert 400 in outcomes


def test_the_destination_must_be_an_empty_folder(study, tmp_path):
    source = write_zip(tmp_path / "s.zip", study_entries(study)[:2])
    with pytest.raises(ValueError, match="not an empty folder"):
        unpack_study(source, tmp_path)
    with pytest.raises(ValueError, match="not an empty folder"):
        unpack_study(source, tmp_path / "missing")


def test_an_upload_error_crosses_a_process_boundary():
    """The service unpacks in another process: its errors come back whole (pickled)."""
    import pickle

    back = pickle.loads(pickle.dumps(UploadError(413, "the upload is over the limit of 1 MB")))
    assert isinstance(back, UploadError)
    assert (back.status, back.message, str(back)) == (
        413,
        *["the upload is over the limit of 1 MB"] * 2,
    )


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_ratio"):
        UploadLimits(max_ratio=0)
