"""spinegrade.service without a running server: the multipart body read as it streams
(the limit, the content type, the fields) and the ``series`` overrides. The service itself,
over HTTP, is tests/test_serve.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spinegrade.cli import serve
from spinegrade.cli.serve import check_bind
from spinegrade.core.errors import ConfigError
from spinegrade.data.upload import UploadError
from spinegrade.inference.files import BundleFiles
from spinegrade.service.app import _overrides
from spinegrade.service.form import read_form

BOUNDARY = "XyZ"


def _body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


def _read(body: bytes, folder, limit: int = 10**6, chunk: int = 7, content_type=None):
    async def chunks():
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return asyncio.run(read_form(chunks(), kind, folder, limit))


def test_the_study_streams_to_a_file_and_the_fields_to_memory(tmp_path):
    zipped = bytes(range(256)) * 40
    form = _read(
        _body([("series", None, b'{"2": "Sagittal T1"}'), ("study", "s.zip", zipped)]), tmp_path
    )
    assert form.study == tmp_path / "upload.zip" and form.study.read_bytes() == zipped
    assert form.study_filename == "s.zip"
    assert form.fields == {"series": '{"2": "Sagittal T1"}'}


def test_the_limit_stops_the_upload_at_413(tmp_path):
    body = _body([("study", "s.zip", b"x" * 5000)])
    with pytest.raises(UploadError) as caught:
        _read(body, tmp_path, limit=1000)
    assert caught.value.status == 413 and "over the limit" in str(caught.value)


@pytest.mark.parametrize(
    ("content_type", "status"), [("application/json", 415), ("multipart/form-data", 415)]
)
def test_another_content_type_is_415(tmp_path, content_type, status):
    with pytest.raises(UploadError) as caught:
        _read(b"{}", tmp_path, content_type=content_type)
    assert caught.value.status == status and "multipart/form-data" in str(caught.value)


def test_two_studies_in_one_request_are_refused(tmp_path):
    body = _body([("study", "a.zip", b"a"), ("study", "b.zip", b"b")])
    with pytest.raises(UploadError, match="one study per request"):
        _read(body, tmp_path)


def test_series_overrides_are_checked():
    assert _overrides('{"2": "Sagittal T1", "3": "Axial T2"}') == {
        "2": "Sagittal T1",
        "3": "Axial T2",
    }
    assert _overrides("  ") == {}
    for bad, wording in [
        ("not json", "not JSON"),
        ('["Sagittal T1"]', "expected"),
        ('{"x": "Axial T2"}', "expected"),
        ('{"2": "Coronal T1"}', "unknown series type 'Coronal T1'"),
    ]:
        with pytest.raises(UploadError, match=wording) as caught:
            _overrides(bad)
        assert caught.value.status == 400


def test_only_loopback_binds_without_a_token():
    check_bind("127.0.0.1", None, False)
    check_bind("::1", None, False)
    check_bind("localhost", None, False)
    check_bind("0.0.0.0", "t", False)
    check_bind("10.0.0.5", None, True)
    with pytest.raises(ConfigError, match="--token.*--insecure"):
        check_bind("0.0.0.0", None, False)


def test_serving_the_workspace_names_what_make_repro_has_not_made(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "data" / "ingest").mkdir(parents=True)
    (tmp_path / "data" / "ingest" / "labels.csv").write_text("study_id\n")

    assert serve.main([]) == 1

    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"no localizers, {Path('data/compare-backbones/choice.json')} here" in said
    assert "make repro" in said and "models:/spinegrade-study@champion" in said
    assert BundleFiles.workspace(tmp_path).missing() == [
        tmp_path / "localizers",
        tmp_path / "data" / "compare-backbones" / "choice.json",
    ]
