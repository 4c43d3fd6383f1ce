"""The study grader as one MLflow model (spinegrade-study) and `spinegrade serve`, on small
untrained models (helpers.write_bundle): the same rows as predict, from a saved model, the
registry and `mlflow models serve`; the service's answers, each bad upload, identifiers,
the token, load shedding, and the upload page in chromium.

The trained pipeline's own registration is checked in tests/test_pipeline.py.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pydicom
import pytest
import requests
import yaml
from helpers import free_port, header_identifiers, write_bundle

from spinegrade.core import vocab
from spinegrade.data.tables import read_series_table
from spinegrade.inference.files import BundleFiles
from spinegrade.inference.predict import predict_studies
from spinegrade.tracking.study_model import load_packed, log_study_model, model_arguments

pytestmark = pytest.mark.server

SEVERITIES = list(vocab.SEVERITY_COLUMNS)
ENGINE = {"device": "cpu", "precision": "fp32", "threads": 1}


@pytest.fixture(scope="module")
def packed(tiny_ingest, tmp_path_factory) -> Path:
    """A packed study grader (untrained models): models/, localizers/, choice.json,
    labels.csv, params.yaml."""
    root = tmp_path_factory.mktemp("packed") / "bundle"
    root.mkdir()
    write_bundle(root, tiny_ingest)
    return root


@pytest.fixture(scope="module")
def saved(packed, tmp_path_factory) -> Path:
    """The study grader saved as an MLflow model directory."""
    path = tmp_path_factory.mktemp("model") / "study"
    mlflow.pyfunc.save_model(str(path), **model_arguments(packed))
    return path


@pytest.fixture(scope="module")
def expected(packed, tiny_dataset) -> pd.DataFrame:
    """What predict grades the test studies to with the same models."""
    series = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    return predict_studies(tiny_dataset / "test_images", series, load_packed(packed)).submission


def dicom_frame(tiny_dataset: Path, describe: bool = True) -> pd.DataFrame:
    """The model's input for the test studies: one row per DICOM file."""
    table = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    rows = []
    for r in table.itertuples(index=False):
        folder = tiny_dataset / "test_images" / str(r.study_id) / str(r.series_id)
        for f in sorted(folder.glob("*.dcm")):
            row = {"dicom": f.read_bytes(), "series_id": str(r.series_id)}
            row |= {"series_description": r.series_description} if describe else {}
            rows.append(row | {"study_id": str(r.study_id)})
    return pd.DataFrame(rows)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got["row_id"].tolist() == want["row_id"].tolist()
    np.testing.assert_allclose(
        got[SEVERITIES].to_numpy(float), want[SEVERITIES].to_numpy(float), rtol=0, atol=1e-6
    )


def test_the_study_model_grades_as_predict_does(saved, tiny_dataset, expected):
    """Loaded from its directory, the model gives predict's rows for the same files, with
    the series types given or read off the DICOM headers."""
    model = mlflow.pyfunc.load_model(str(saved))
    got = model.predict(dicom_frame(tiny_dataset))
    assert list(got.columns) == ["study_id", "row_id", *SEVERITIES, "warnings"]
    assert_same_rows(got, expected)
    assert (got["row_id"].str.split("_").str[0] == got["study_id"]).all()
    routed = model.predict(dicom_frame(tiny_dataset, describe=False))
    assert_same_rows(routed, expected)


def test_the_study_model_from_the_registry_and_mlflow_models_serve(
    packed, tiny_dataset, expected, tmp_path, monkeypatch, no_tracking_uri
):
    """log_study_model registers spinegrade-study@champion (here serve-test-study), which
    loads back with the same rows, and which `mlflow models serve` answers over HTTP with
    the DICOM bytes as base64 in MLflow's JSON."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-test")
    files = BundleFiles(
        packed / "models", packed / "localizers", packed / "choice.json", packed / "labels.csv"
    )
    with mlflow.start_run():
        model_uri, version = log_study_model("serve-test", files, packed / "params.yaml")
    assert (model_uri, version) == ("models:/serve-test-study@champion", "1")
    frame = dicom_frame(tiny_dataset)
    assert_same_rows(mlflow.pyfunc.load_model(model_uri).predict(frame), expected)

    port = free_port()
    log = tmp_path / "models-serve.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(f"http://127.0.0.1:{port}/ping", proc, log)
        data = [
            [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in row]
            for row in frame.itertuples(index=False)
        ]
        payload = {"dataframe_split": {"columns": list(frame.columns), "data": data}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=600)
        assert answer.status_code == 200, answer.text[:2000]
        assert_same_rows(pd.DataFrame(answer.json()["predictions"]), expected)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s:\n{log.read_text()[-3000:]}")


# --- spinegrade serve -------------------------------------------------------------------


@dataclass
class Server:
    url: str
    log: Path
    tmp: Path  # the service's TMPDIR: every request's folder is made here
    pid: int  # the service's process (the leader of its process group)

    def grade(self, study: bytes, name: str = "study.zip", **kwargs) -> requests.Response:
        files = {"study": (name, study, "application/zip")}
        return requests.post(f"{self.url}/v1/grade", files=files, timeout=600, **kwargs)

    def leftovers(self) -> list[Path]:
        return sorted(self.tmp.glob("spinegrade-serve-*"))


@contextlib.contextmanager
def serving(model: Path | str, where: Path, *args: str) -> Iterator[Server]:
    """`spinegrade serve --model <model>` run in ``where`` (a params.yaml with the CPU engine
    is written unless there is one), in its own process group, until the block ends."""
    where.mkdir(parents=True, exist_ok=True)
    if not (where / "params.yaml").is_file():
        (where / "params.yaml").write_text(yaml.safe_dump({"engine": ENGINE}))
    tmp = where / "tmp"
    tmp.mkdir()
    port = free_port()
    log = where / "serve.log"
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SPINEGRADE_TOKEN")
    }
    cmd = [sys.executable, "-m", "spinegrade.cli.serve", "--model", str(model), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, *args],
            cwd=where,
            env=env | {"TMPDIR": str(tmp)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc, log)
        yield Server(f"http://127.0.0.1:{port}", log, tmp, proc.pid)
        assert proc.poll() is None, f"the service died:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(saved, tmp_path_factory) -> Iterator[Server]:
    """One service for the module: one grading thread and no queue, so a second request
    while one grades gets 503."""
    with serving(saved, tmp_path_factory.mktemp("serve") / "ws", "--queue", "0") as s:
        yield s


def study_zip(
    tiny_dataset: Path, study: str | None = None, top: str | None = None, **extra
) -> bytes:
    """A test study's files as a zip under the folder ``top`` (default: the study id);
    ``extra``: entry name -> bytes added."""
    root = tiny_dataset / "test_images"
    study = study or sorted(p.name for p in root.iterdir())[0]
    top = study if top is None else top
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((root / study).rglob("*.dcm")):
            zf.write(f, f"{top}/{f.relative_to(root / study)}" if top else str(f.relative_to(root)))
        for name, data in extra.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_the_service_grades_a_study_as_the_model_does(server, saved, tiny_dataset):
    """POST /v1/grade: the zip's top folder names the study; its 25 rows are the model's
    for the same files; the series are listed with their type and basis; the points found;
    the request's temporary folder is gone."""
    study = sorted(p.name for p in (tiny_dataset / "test_images").iterdir())[0]
    answer = server.grade(study_zip(tiny_dataset, study))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["study_id"] == study and body["seconds"] > 0
    frame = dicom_frame(tiny_dataset)
    want = mlflow.pyfunc.load_model(str(saved)).predict(frame[frame["study_id"] == study])
    assert_same_rows(pd.DataFrame(body["rows"]), want)
    assert len(body["rows"]) == 25
    assert sorted(s["type"] for s in body["series"])[:1] == [vocab.AXIAL_T2]
    assert all(s["basis"] == "description" for s in body["series"])
    assert body["points"] and {"condition", "level", "x", "y"} <= set(body["points"][0])
    assert server.leftovers() == []


def _raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink_zip() -> bytes:
    info = zipfile.ZipInfo("study/link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _raw_zip([(info, b"/etc/passwd")])


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("study/1/1.dcm", bytes(64 * 2**20))  # 64 MB of zeros in ~64 kB
    return buf.getvalue()


BAD_UPLOADS = {
    "not a zip": (lambda d: b"this is not a zip file", 400, "not a zip"),
    "an empty zip": (lambda d: _raw_zip([]), 400, "empty"),
    "a '..' entry": (lambda d: _raw_zip([("../../evil.dcm", b"x")]), 400, "'..'"),
    "an absolute path": (lambda d: _raw_zip([("/tmp/evil.dcm", b"x")]), 400, "absolute"),
    "a symlink": (lambda d: _symlink_zip(), 400, "symbolic link"),
    "a zip bomb": (lambda d: _bomb(), 413, "times its compressed size"),
    "no DICOM at all": (lambda d: _raw_zip([("notes.txt", b"hello")]), 422, "no DICOM"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_gets_a_clear_4xx_and_the_service_keeps_serving(
    server, tiny_dataset, tmp_path, case
):
    """Each bad upload: its status, an error naming the problem, never a traceback, nothing
    written outside the request's folder (nor left in it), and /health still ready."""
    build, status, wording = BAD_UPLOADS[case]
    before = sorted(p.name for p in server.tmp.parent.iterdir())
    answer = server.grade(build(tiny_dataset))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert wording in error and "Traceback" not in error
    assert sorted(p.name for p in server.tmp.parent.iterdir()) == before
    assert not any(server.tmp.parent.parent.glob("evil*"))
    assert server.leftovers() == []
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ready"


def unpackers(server: Server) -> list[psutil.Process]:
    """The service's unpacking processes (multiprocessing's spawned workers)."""
    children = psutil.Process(server.pid).children(recursive=True)
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def test_an_unpacking_process_that_dies_is_replaced(server, tiny_dataset):
    """Uploads are unpacked in a process beside the grading one, started with the service;
    killed, it is replaced and the next upload is graded all the same."""
    deadline = time.monotonic() + 60
    while not (workers := unpackers(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 1
    workers[0].kill()
    workers[0].wait(30)
    answer = server.grade(study_zip(tiny_dataset))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["rows"]) == 25
    (replaced,) = unpackers(server)
    assert replaced.pid != workers[0].pid
    assert "the unpacking process died (attempt 1): starting another" in server.log.read_text()
    assert server.leftovers() == []


def test_what_cannot_be_graded_is_listed_and_the_rest_graded(server, tiny_dataset):
    """Non-DICOM files are ignored and listed, DICOM files without pixels or with a
    transfer syntax no installed decoder reads are listed as rejected, and the study is
    graded from the rest."""
    first = next((tiny_dataset / "test_images").rglob("*.dcm"))
    ds = pydicom.dcmread(first)
    del ds.PixelData
    no_pixels = io.BytesIO()
    ds.save_as(no_pixels, enforce_file_format=True)
    mpeg = pydicom.dcmread(first)
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
    mpeg.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    compressed = io.BytesIO()
    mpeg.save_as(compressed, enforce_file_format=True)
    extra = {
        "s/readme.txt": b"notes",
        "s/empty.dcm": no_pixels.getvalue(),
        "s/mpeg.dcm": compressed.getvalue(),
    }
    answer = server.grade(study_zip(tiny_dataset, top="s", **extra))
    assert answer.status_code == 200, answer.text
    warnings = "\n".join(answer.json()["warnings"])
    assert "ignored 's/readme.txt'" in warnings or "ignored s/readme.txt" in warnings, warnings
    assert "s/empty.dcm" in warnings and "no pixel data" in warnings
    assert "s/mpeg.dcm" in warnings and "transfer syntax" in warnings, warnings
    assert len(answer.json()["rows"]) == 25


def test_a_study_missing_a_series_type_gets_prior_rows_and_a_warning(server, tiny_dataset):
    """Only the axial series: the sagittal rows take the class prior, with a warning."""
    study = sorted(p.name for p in (tiny_dataset / "test_images").iterdir())[0]
    table = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    axial = table[
        (table["study_id"] == int(study)) & (table["series_description"] == vocab.AXIAL_T2)
    ]
    folder = tiny_dataset / "test_images" / study / str(axial["series_id"].iloc[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.glob("*.dcm")):
            zf.write(f, f"ax/{f.name}")
    answer = server.grade(buf.getvalue())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["rows"]) == 25
    assert any(vocab.SAGITTAL_T1 in w for w in body["warnings"]), body["warnings"]


def _raw_request(url: str, head: str, body: bytes = b"", hang_up: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        if hang_up:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_upload_over_the_limit_is_refused_before_it_is_read(server):
    """A body declared over the limit gets 413 at once, though none of it was sent."""
    head = (
        "POST /v1/grade HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        f"boundary=b\r\nContent-Length: {2**40}\r\nConnection: close\r\n\r\n"
    )
    reply = _raw_request(server.url, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"over the limit" in reply


def test_a_client_that_hangs_up_mid_upload_leaves_nothing(server, tiny_dataset):
    data = study_zip(tiny_dataset)
    body = b'--b\r\nContent-Disposition: form-data; name="study"; filename="s.zip"\r\n\r\n' + data
    head = (
        "POST /v1/grade HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    )
    _raw_request(server.url, head, body[: len(body) // 2], hang_up=True)
    deadline = time.monotonic() + 30
    while server.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.leftovers() == []
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ready"


def test_no_identifier_leaves_the_service(server, tiny_dataset):
    """Answers, the upload page, the review page and the service's log hold no DICOM
    header identifier (names, ids, birth dates, institutions, UIDs, dates)."""
    answer = server.grade(study_zip(tiny_dataset), params={"review": "true"})
    assert answer.status_code == 200, answer.text
    review = requests.get(server.url + answer.json()["review"], timeout=30)
    assert (
        review.status_code == 200
        and "default-src 'none'" in review.headers["content-security-policy"]
    )
    page = requests.get(server.url + "/", timeout=30)
    identifiers = header_identifiers(tiny_dataset)
    for f in list((tiny_dataset / "test_images").rglob("*.dcm"))[:20]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        identifiers |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        identifiers |= {str(ds.StudyDate)}
    texts = {
        "answer": answer.text,
        "review": review.text,
        "page": page.text,
        "log": server.log.read_text(),
    }
    for where, text in texts.items():
        for ident in identifiers:
            assert ident not in text, f"{ident!r} in the {where}"


def test_busy_gets_503_with_retry_after_and_health_answers_meanwhile(server, tiny_dataset):
    """One grading slot: concurrent uploads beyond it get 503 with Retry-After at once,
    and /health answers while a study grades."""
    data = study_zip(tiny_dataset)
    statuses: list[requests.Response] = []

    def upload():
        statuses.append(server.grade(data, params={"review": "true"}))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    started = time.monotonic()
    health = requests.get(f"{server.url}/health", timeout=10)
    health_seconds = time.monotonic() - started
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in statuses)
    assert codes[0] == 200 and codes[-1] == 503 and set(codes) == {200, 503}, codes
    assert all(r.headers.get("retry-after") for r in statuses if r.status_code == 503)
    assert health.status_code == 200 and health_seconds < 5


def test_a_token_guards_every_route_but_health(saved, tiny_dataset, tmp_path):
    with serving(saved, tmp_path / "ws", "--token", "s3cret") as s:
        assert requests.get(f"{s.url}/health", timeout=10).status_code == 200
        assert s.grade(study_zip(tiny_dataset)).status_code == 401
        assert requests.get(f"{s.url}/", timeout=10).status_code == 401
        wrong = s.grade(study_zip(tiny_dataset), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = s.grade(study_zip(tiny_dataset), headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200, right.text
        session = requests.Session()  # the upload page: the token once in the URL, then a cookie
        assert session.get(f"{s.url}/?token=s3cret", timeout=10).status_code == 200
        assert session.get(f"{s.url}/openapi.json", timeout=10).status_code == 200


def test_the_service_serves_the_workspace_dvc_outputs(packed, saved, tiny_dataset, tmp_path):
    """Without --model it loads what `make repro` left in the workspace (models/,
    localizers/, the choice, the labels, params.yaml) and grades as the model does."""
    ws = tmp_path / "ws"
    shutil.copytree(packed / "models", ws / "models")
    shutil.copytree(packed / "localizers", ws / "localizers")
    (ws / "data" / "compare-backbones").mkdir(parents=True)
    shutil.copy(packed / "choice.json", ws / "data" / "compare-backbones" / "choice.json")
    (ws / "data" / "ingest").mkdir()
    shutil.copy(packed / "labels.csv", ws / "data" / "ingest" / "labels.csv")
    shutil.copy(packed / "params.yaml", ws / "params.yaml")
    study = sorted(p.name for p in (tiny_dataset / "test_images").iterdir())[0]
    with serving("workspace", ws) as s:
        health = requests.get(f"{s.url}/health", timeout=10).json()
        assert health["status"] == "ready" and health["model"] == "workspace"
        answer = s.grade(study_zip(tiny_dataset, study))
    assert answer.status_code == 200, answer.text
    frame = dicom_frame(tiny_dataset)
    want = mlflow.pyfunc.load_model(str(saved)).predict(frame[frame["study_id"] == study])
    assert_same_rows(pd.DataFrame(answer.json()["rows"]), want)


def test_a_public_address_needs_a_token_or_insecure(saved, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spinegrade.cli.serve", "--model", str(saved), "--host", "0.0.0.0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SPINEGRADE_TOKEN"},
    )
    assert proc.returncode == 1
    assert "--token" in proc.stderr and "--insecure" in proc.stderr


def test_pages_send_a_csp_and_other_origins_are_refused(server, tiny_dataset):
    page = requests.get(f"{server.url}/", timeout=10)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in {k.lower() for k in page.headers}
    foreign = server.grade(study_zip(tiny_dataset), headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["error"]
    same = requests.get(f"{server.url}/health", headers={"Origin": server.url}, timeout=10)
    assert same.status_code == 200


def test_openapi_describes_the_grade_route(server):
    spec = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/grade"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "study" in body["schema"]["properties"]
    assert "/health" in spec["paths"]


@pytest.mark.chromium
def test_the_upload_page_grades_a_study_in_chromium(server, tiny_dataset, tmp_path):
    """Chromium, offline but for the service: choose a study's zip on the upload page; it
    shows the 25 rows and the study's images with the points found, and no page or console
    error."""
    from browser import offline_page

    study = tmp_path / "study.zip"
    study.write_bytes(study_zip(tiny_dataset))
    with offline_page(server.url + "/", 1400, 1000, service=server.url) as (page, problems):
        page.set_input_files("#zip-input", str(study))
        page.locator("#rows tbody tr").nth(24).wait_for(timeout=120_000)
        assert page.locator("#rows tbody tr").count() == 25
        frame = page.frame_locator("#review")
        frame.locator("#study-view .view img").first.wait_for(timeout=60_000)
        assert frame.locator("#study-view .mark-found").count() > 0
        widths = frame.locator("#study-view .view img").evaluate_all(
            "els => els.map(e => e.naturalWidth)"
        )
        assert widths and all(w > 0 for w in widths)
    assert problems == []
