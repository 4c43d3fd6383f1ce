"""spinegrade.cli.server: a team MLflow server, training logged to it over HTTP, basic auth,
and the tracking preflight's faults.

Two real servers are started by the module (each ``python -m spinegrade.cli.server`` in a
process group of its own, on a free port of 127.0.0.1): one on a PostgreSQL database that the
test creates and drops, with artifacts in a temporary folder; one with ``--auth`` on the
defaults of a temporary workspace (SQLite and artifacts under mlruns/server). The training
stage runs against the first with nothing but MLFLOW_TRACKING_URI set, and everything is
read back over HTTP. The servers are stopped, and their process groups checked to be gone,
also when a test fails.

PostgreSQL must be running on 127.0.0.1:5432 with trust auth for user ``postgres`` (or set
SPINEGRADE_TEST_PG to an admin URI): the tests fail, never skip, without it.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import http.server
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import psycopg
import pytest
import yaml
from helpers import PG_ADMIN, free_port, group_members
from mlflow.tracking import MlflowClient
from PIL import Image

from spinegrade.cli import server
from spinegrade.core.errors import EXPECTED_ERRORS
from spinegrade.tracking import store as tracking

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 40.0
READY = re.compile(r"export MLFLOW_TRACKING_URI=(http://\S+)")
GROUP = re.compile(r"server process group (\d+)")
ADMIN_PASSWORD = "admin-password-for-tests"  # basic auth wants 12 characters or more
EXPERIMENT = "server-test"
GROUP_NAME, BACKBONE = "spinal", "resnet18"
RUN_NAME = f"{GROUP_NAME}-{BACKBONE}-fold0"


# --- helpers ---------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow's or the server's settings, plus ``extra``; this
    checkout's src/ first on the path, so the subprocesses run the code under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPINEGRADE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return {**env, **extra}


def request(
    url: str, body: dict | None = None, auth: tuple[str, str] | None = None
) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST of ``body`` as JSON; HTTP errors are returned."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=30
        ) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Server:
    """One ``python -m spinegrade.cli.server`` process (its own group) and the mlflow server
    group it starts."""

    proc: subprocess.Popen
    log: Path
    url: str = ""
    pgid: int | None = None  # the mlflow server's process group (printed by the module)
    terminated: bool = False

    @classmethod
    def launch(cls, log: Path, cwd: Path, env: dict[str, str], *args: str) -> Server:
        cmd = [sys.executable, "-m", "spinegrade.cli.server", "--workers", "1", *args]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(proc, log)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> Server:
        deadline = time.monotonic() + timeout
        while not (m := READY.search(self.text())):
            assert self.proc.poll() is None, (
                f"server exited with {self.proc.returncode}:\n{self.text()}"
            )
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.text()}"
            time.sleep(0.3)
        self.url = m.group(1)
        self.pgid = int(GROUP.search(self.text()).group(1))
        return self

    def groups(self) -> set[int]:
        return {self.proc.pid} | ({self.pgid} if self.pgid else set())

    def terminate(self) -> None:
        """SIGTERM once (a second one could cut the module's clean-up short)."""
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> int | None:
        """SIGTERM, as a terminal or service manager would; the module's exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def kill_everything(self) -> None:
        """SIGKILL both groups and every group a child of the module leads."""
        groups = self.groups()
        with contextlib.suppress(psutil.Error):
            groups |= {os.getpgid(c.pid) for c in psutil.Process(self.proc.pid).children(True)}
        for g in groups - {os.getpgrp()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def survivors(self, wait: float = 15.0) -> list[str]:
        """Command lines of processes left in either group after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            left = [p for g in self.groups() for p in group_members(g)]
            if not left or time.monotonic() > deadline:
                return [" ".join(p.cmdline()) for p in left]
            time.sleep(0.3)


@contextlib.contextmanager
def stopped_at_exit(*servers: Server):
    """Stop every server however the block ends; then no process of theirs may be left."""
    try:
        yield
    finally:
        for s in servers:
            if s.stop() is None:
                s.kill_everything()
        left = {s.log.name: s.survivors() for s in servers}
        for s in servers:
            if any(left.values()):
                s.kill_everything()
        assert not any(left.values()), f"processes survived the stop: {left}"


# --- PostgreSQL, the servers, the training ---------------------------------------------------


@pytest.fixture(scope="module")
def pg_database():
    """A fresh PostgreSQL database (unique name) for the module; dropped afterwards."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        admin, reason = None, " ".join(str(exc).split())
    if admin is None:
        pytest.fail(
            f"PostgreSQL is not reachable at {tracking.redact(PG_ADMIN)} ({reason}). Start it "
            "(e.g. `service postgresql start` or `pg_ctlcluster 15 main start`) with trust "
            "auth for user postgres on 127.0.0.1:5432, or set SPINEGRADE_TEST_PG to an admin "
            "URI of another server.",
            pytrace=False,
        )
    name = f"spinegrade_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        parts = urllib.parse.urlsplit(PG_ADMIN)
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        left = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
        admin.close()
        assert not left, f"database {name} was not dropped"


@dataclass
class Servers:
    pg: Server  # PostgreSQL store, artifacts in a temporary folder, no auth
    auth: Server  # --auth, all defaults of a temporary workspace
    pg_artifacts: Path
    auth_ws: Path


@pytest.fixture(scope="module")
def launched(tmp_path_factory, pg_database):
    """Both servers, launched in the background (not yet answering); stopped at the end,
    however the module ends. A slow test that comes before the ones that use them asks for
    this fixture, so their start-up (half a minute) overlaps that test."""
    base = tmp_path_factory.mktemp("servers")
    pg_artifacts, auth_ws = base / "pg-artifacts", base / "auth-ws"
    auth_ws.mkdir()
    pg = Server.launch(
        base / "pg.log",
        base,
        clean_env(),
        "--port",
        str(free_port()),
        "--backend-store-uri",
        pg_database,
        "--artifacts-destination",
        str(pg_artifacts),
    )
    auth = Server.launch(
        base / "auth.log",
        auth_ws,
        clean_env(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD),
        "--port",
        str(free_port()),
        "--auth",
    )
    with stopped_at_exit(pg, auth):
        yield Servers(pg, auth, pg_artifacts, auth_ws)


@pytest.fixture(scope="module")
def servers(launched) -> Servers:
    """Both servers, once they answer."""
    launched.pg.wait_ready()
    launched.auth.wait_ready()
    return launched


@pytest.fixture(scope="module")
def train_ws(tmp_path_factory, tiny_crops) -> Path:
    """A workspace with one condition group's crops, folds and a one-epoch resnet18 recipe."""
    ws = tmp_path_factory.mktemp("train-ws")
    groups, _ = tiny_crops
    crops = groups[GROUP_NAME]
    (ws / "data" / "crops").mkdir(parents=True)
    np.save(ws / "data" / "crops" / f"{GROUP_NAME}.npy", crops.crops)
    crops.index.to_csv(ws / "data" / "crops" / f"{GROUP_NAME}.csv", index=False)
    studies = sorted(crops.index["study_id"].unique())
    folds = pd.DataFrame({"study_id": studies, "fold": np.arange(len(studies)) % 3})
    folds.to_csv(ws / "data" / "folds.csv", index=False)
    params = {
        "train-per-condition": {
            "groups": [GROUP_NAME],
            "backbones": [BACKBONE],
            "training": {
                "folds": [0],
                "epochs": 1,
                "batch_size": 16,
                "log_model": False,
            },
            "recipes": {BACKBONE: {"lr": 0.001}},
        },
        "engine": {"device": "cpu", "precision": "fp32", "threads": 1},
        "mlflow": {"experiment": EXPERIMENT},
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def run_training(
    ws: Path, tracking_uri: str, out: str = "models"
) -> tuple[subprocess.CompletedProcess, float]:
    """The train-per-condition stage in ``ws``, logging to ``tracking_uri``; (result, s)."""
    cmd = [
        sys.executable,
        str(REPO / "stages" / "train_per_condition.py"),
        "--params",
        "params.yaml",
        "--group",
        GROUP_NAME,
        "--backbone",
        BACKBONE,
        "--out",
        f"{out}/{GROUP_NAME}/{BACKBONE}",
    ]
    start = time.monotonic()
    done = subprocess.run(
        cmd,
        cwd=ws,
        env=clean_env(MLFLOW_TRACKING_URI=tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def trained(servers, train_ws) -> Path:
    done, _ = run_training(train_ws, servers.pg.url)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return train_ws


@pytest.fixture
def no_tracking_env(monkeypatch, no_tracking_uri):
    """No MLflow settings in the environment, nor a URI set by mlflow.set_tracking_uri
    (called by tracking.setup)."""
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)


# --- units -----------------------------------------------------------------------------------


def test_server_command_serves_artifacts_and_adds_basic_auth():
    cmd = server.server_command("postgresql://u@db:5432/m", "s3://b/p", "0.0.0.0", 5001, 2)
    assert cmd[0].endswith("mlflow") and cmd[1] == "server"
    args = {a: b for a, b in zip(cmd, cmd[1:], strict=False) if a.startswith("--")}
    assert args["--backend-store-uri"] == "postgresql://u@db:5432/m"
    assert args["--artifacts-destination"] == "s3://b/p"
    assert (args["--host"], args["--port"], args["--workers"]) == ("0.0.0.0", "5001", "2")
    assert "--serve-artifacts" in cmd and "--default-artifact-root" not in cmd
    assert "--app-name" not in cmd
    auth = server.server_command("sqlite:////x/db", "file:///a", "127.0.0.1", 5, 1, auth=True)
    assert auth[auth.index("--app-name") + 1] == "basic-auth"


def test_allowed_hosts_accept_the_printed_url():
    assert server.allowed_hosts("127.0.0.1", None) is None  # MLflow's defaults suffice
    assert server.allowed_hosts("0.0.0.0", "mlflow.example") == "mlflow.example"
    hosts = server.allowed_hosts("0.0.0.0", None).split(",")
    name = urllib.parse.urlsplit(f"http://{server.public_host('0.0.0.0')}:5000").hostname
    assert {name, f"{name}:*", "localhost:*", "127.0.0.1:*", "10.*"} <= set(hosts)
    assert {"mlflow.example", "mlflow.example:*"} <= set(
        server.allowed_hosts("mlflow.example", None).split(",")
    )


def test_options_come_from_the_environment_and_a_dot_env_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    keys = ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_PORT")  # MLflow's own variables
    for key in keys:  # so that teardown removes what the .env file sets
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    closed = f"postgresql://team:dotenv-secret@127.0.0.1:{free_port()}/mlflow"
    (tmp_path / ".env").write_text(
        f"MLFLOW_BACKEND_STORE_URI={closed}\nMLFLOW_PORT={free_port()}\n"
    )
    assert server.main([]) == 1
    err = capsys.readouterr().err
    assert f"cannot open backend store {tracking.redact(closed)}: " in err
    assert "dotenv-secret" not in err
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "file:///tmp/x")  # the environment wins
    assert server.main(["--env-file", str(tmp_path / ".env")]) == 1
    assert "backend store file:///tmp/x is not a database URI" in capsys.readouterr().err


def test_env_file_goes_to_mlflow_and_a_missing_one_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cmd = server.server_command(
        "sqlite:////x/db", "file:///a", "127.0.0.1", 5, 1, env_file=Path(".env")
    )
    assert cmd[1:4] == ["--env-file", ".env", "server"]  # `mlflow --env-file F server ...`
    assert "--env-file" not in server.server_command("sqlite:////x/db", "file:///a", "::1", 5, 1)
    assert server.main(["--env-file", "team.env"]) == 1
    err = capsys.readouterr().err
    assert err == "error: environment file 'team.env' does not exist\n"
    assert not (tmp_path / "mlruns").exists()


def test_redact_masks_only_the_password():
    assert tracking.redact("postgresql://u:s3cret@db:5432/m") == "postgresql://u:***@db:5432/m"
    assert tracking.redact("https://alice:pw@mlflow.example:443/") == (
        "https://alice:***@mlflow.example:443/"
    )
    assert tracking.redact("postgresql://u@db/m") == "postgresql://u@db/m"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_defaults_live_in_mlruns_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve() / "mlruns" / "server"
    assert server.default_backend_uri() == f"sqlite:///{root / 'mlflow.db'}"
    assert server.auth_database_uri(f"sqlite:///{root / 'mlflow.db'}") == (
        f"sqlite:///{root / 'basic_auth.db'}"
    )
    assert server.auth_database_uri("postgresql://u@db/m") == "postgresql://u@db/m"
    assert server.artifacts_destination("art") == (tmp_path.resolve() / "art").as_uri()
    assert (tmp_path / "art").is_dir()
    assert server.artifacts_destination("s3://bucket/prefix") == "s3://bucket/prefix"


def test_auth_config_is_private_and_escapes_percent(tmp_path):
    path = server.write_auth_config(
        tmp_path / "auth.ini", "postgresql://u:p%40ss@db/m", "boss", "READ"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = configparser.ConfigParser()
    cfg.read(path)
    assert cfg["mlflow"]["database_uri"] == "postgresql://u:p%40ss@db/m"
    assert cfg["mlflow"]["admin_username"] == "boss"
    assert "admin_password" not in cfg["mlflow"]


def test_wrong_backend_uri_is_one_line_naming_it(pg_database, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    missing = pg_database.replace("postgres@", "postgres:hunter2pw@") + "_missing"
    closed = f"postgresql://postgres:hunter2pw@127.0.0.1:{free_port()}/mlflow"
    for uri, reason in [
        (missing, "does not exist"),
        (closed, "Connection refused"),
        ("file:///tmp/mlruns", "not a database URI"),
    ]:
        start = time.monotonic()
        assert server.main(["--backend-store-uri", uri, "--port", str(free_port())]) == 1
        assert time.monotonic() - start < 10
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert tracking.redact(uri) in err and reason in err
        assert "hunter2pw" not in err and "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()  # nothing was started or created


@pytest.mark.slow
def test_basic_auth_without_a_password_is_one_line(launched, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    assert server.main(["--auth", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MLFLOW_AUTH_ADMIN_PASSWORD" in err, err
    assert server.main(["--auth", "--admin-password", "short", "--port", str(free_port())]) == 1
    assert "at least 12 characters" in capsys.readouterr().err


# --- faults of the tracking preflight --------------------------------------------------------


def test_unreachable_server_fails_fast_naming_the_uri(no_tracking_env, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # closed: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(tracking.TrackingServerError) as err:
        tracking.setup("exp")
    assert time.monotonic() - start < 5
    assert isinstance(err.value, EXPECTED_ERRORS)  # the stage runner prints it as one line
    assert str(err.value) == (
        f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable: "
        "[Errno 111] Connection refused"
    )


def test_hung_server_times_out_in_seconds():
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(tracking.TrackingServerError) as err:
            tracking.check_server(uri, timeout=1)
        assert time.monotonic() - start < 4
        assert str(err.value) == (
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable: "
            "Read timed out. (read timeout=1)"
        )


def test_refusals_and_strangers_are_told_apart(no_tracking_env, monkeypatch):
    """What MLflow's client raises for a 401 and for a server that is no MLflow server."""
    answers = {"status": 401, "body": b"You are not authenticated."}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(answers["status"])
            self.end_headers()
            self.wfile.write(answers["body"])

        do_POST = do_GET  # noqa: N815 (the client searches with a POST)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{httpd.server_port}"
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-hers")
        with pytest.raises(tracking.TrackingServerError) as err:
            tracking.check_server(uri, timeout=2)
        assert str(err.value) == (
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) refused the credentials of "
            "user 'alice' with HTTP 401: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account on it"
        )
        answers.update(status=404, body=b"<html>Not Found</html>")
        with pytest.raises(tracking.TrackingServerError) as err:
            tracking.check_server(uri, timeout=2)
        assert str(err.value).startswith(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) answered with an error: "
            "is it an MLflow server? ("
        )
        assert "404" in str(err.value) and "Not Found" in str(err.value)
        httpd.shutdown()


@pytest.mark.slow
def test_stage_against_a_dead_server_prints_one_line(launched, train_ws):
    uri = f"http://127.0.0.1:{free_port()}"
    done, _ = run_training(train_ws, uri, out="dead-server-models")
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if re.search(r"(^|\s)ERROR\s", line)]
    assert len(errors) == 1 and f"MLflow tracking server {uri}" in errors[0], out
    assert "Connection refused" in errors[0]
    assert not (train_ws / "dead-server-models").exists()


# --- the PostgreSQL server: training logged over HTTP ----------------------------------------


@pytest.mark.slow
def test_training_logs_to_the_server_and_reads_back_over_http(servers, trained, pg_database):
    url = servers.pg.url
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    # created through the server without a local artifact location: the server proxies
    assert exp.artifact_location == f"mlflow-artifacts:/{exp.experiment_id}"
    assert not (trained / "mlruns").exists() and not (trained / "mlartifacts").exists()

    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parents = [r for r in runs.values() if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    assert len(parents) == 1 and set(runs) == {parents[0].info.run_name, RUN_NAME}
    run = runs[RUN_NAME]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert (tags["group"], tags["backbone"], tags["fold"]) == (GROUP_NAME, BACKBONE, "0")
    assert tags[tracking.ROLE_TAG] == "train"
    assert tags["dvc.data/crops"].startswith("sha256:") and "git_commit" in tags
    params = run.data.params
    assert params["training.epochs"] == "1" and params["fold"] == "0"
    assert params["crops.size_px"] == "32" and params["recipe.lr"] == "0.001"

    # the metrics are what the stage computed and wrote
    written = json.loads((trained / "models" / GROUP_NAME / BACKBONE / "metrics.json").read_text())
    fold0 = written["folds"]["fold0"]
    for key in ("val_loss", "accuracy", "macro_recall", "macro_f1", "n_train", "n_val"):
        assert run.data.metrics[f"final_{key}"] == pytest.approx(fold0[key]), key
    assert run.data.metrics["final_gflops"] == pytest.approx(written["gflops"])
    history = pd.read_csv(trained / "models" / GROUP_NAME / BACKBONE / "history.csv")
    logged = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in logged] == [
        (int(r.epoch), pytest.approx(r.val_loss)) for r in history.itertuples()
    ]

    # the same through the raw REST API
    status, body = request(
        f"{url}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp.experiment_id], "filter": "tags.fold = '0'"},
    )
    assert status == 200
    (rest,) = json.loads(body)["runs"]
    assert rest["info"]["run_id"] == run.info.run_id
    rest_metrics = {m["key"]: m["value"] for m in rest["data"]["metrics"]}
    assert rest_metrics["final_val_loss"] == pytest.approx(fold0["val_loss"])

    # the artifact: listed, downloaded by the client, served by REST, stored at the destination
    assert "confusion_matrix.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    local = Path(client.download_artifacts(run.info.run_id, "confusion_matrix.png", str(trained)))
    png = local.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(local) as img:
        assert img.size[0] > 100 and img.size[1] > 100
    status, served = request(
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{exp.experiment_id}/{run.info.run_id}"
        "/artifacts/confusion_matrix.png"
    )
    assert (status, served) == (200, png)
    stored = (
        servers.pg_artifacts / exp.experiment_id / run.info.run_id / "artifacts"
    ) / "confusion_matrix.png"
    assert stored.read_bytes() == png

    # ... and the runs really are in the PostgreSQL database
    with psycopg.connect(pg_database, connect_timeout=5) as conn:
        rows = conn.execute("SELECT name, status FROM runs ORDER BY name").fetchall()
    assert (RUN_NAME, "FINISHED") in rows and len(rows) == 2


@pytest.mark.slow
def test_setup_survives_another_stage_creating_the_experiment_first(
    servers, no_tracking_env, monkeypatch
):
    """A remote store has no file lock: two stages may both find no experiment and create it."""
    url = servers.pg.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    created = MlflowClient(url).create_experiment("raced")
    real, looked = MlflowClient.get_experiment_by_name, []

    def first_look_misses(self, name):  # as if the other stage created it just after
        looked.append(name)
        return None if len(looked) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", first_look_misses)
    assert tracking.setup("raced") == created
    assert looked == ["raced", "raced"]


# --- the basic-auth server -------------------------------------------------------------------


@pytest.mark.slow
def test_auth_server_defaults_live_in_the_workspace(servers):
    root = servers.auth_ws / "mlruns" / "server"
    assert (root / "mlflow.db").is_file() and (root / "basic_auth.db").is_file()
    assert (root / "artifacts").is_dir()
    ini = root / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert ADMIN_PASSWORD not in ini.read_text()
    assert "basic auth on: admin user 'admin'" in servers.auth.text()


@pytest.mark.slow
def test_auth_refuses_anonymous_and_accepts_users(servers, no_tracking_env, monkeypatch):
    url = servers.auth.url
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
    assert request(search)[0] == 401
    assert request(search, auth=("admin", "not-the-password"))[0] == 401
    status, body = request(search, auth=("admin", ADMIN_PASSWORD))
    assert status == 200 and "experiments" in json.loads(body)
    assert request(f"{url}/health")[0] == 200  # the readiness probe stays open

    # the admin creates a teammate, who logs a run through tracking.setup and MLflow
    status, _ = request(
        f"{url}/api/2.0/mlflow/users/create",
        {"username": "teammate", "password": "teammate-password-1"},
        auth=("admin", ADMIN_PASSWORD),
    )
    assert status == 200
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "teammate")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "teammate-password-1")
    exp_id = tracking.setup("auth-test")
    client = MlflowClient(url)
    run = client.create_run(exp_id, run_name="by-teammate")
    client.log_metric(run.info.run_id, "recall", 0.75)
    client.log_text(run.info.run_id, "logged with credentials", "notes/who.txt")
    client.set_terminated(run.info.run_id)
    got = client.get_run(run.info.run_id)
    assert got.data.metrics == {"recall": 0.75}
    path = client.download_artifacts(run.info.run_id, "notes/who.txt", str(servers.auth_ws))
    assert Path(path).read_text() == "logged with credentials"
    stored = servers.auth_ws / "mlruns" / "server" / "artifacts" / exp_id / run.info.run_id
    assert (stored / "artifacts" / "notes" / "who.txt").read_text() == "logged with credentials"


@pytest.mark.slow
def test_wrong_or_missing_credentials_give_the_credentials_error(
    servers, no_tracking_env, monkeypatch
):
    url = servers.auth.url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    start = time.monotonic()
    with pytest.raises(tracking.TrackingServerError) as err:
        tracking.setup("never-created")
    assert time.monotonic() - start < 5
    assert isinstance(err.value, EXPECTED_ERRORS)
    assert str(err.value) == (
        f"MLflow tracking server {url} (MLFLOW_TRACKING_URI) refused the credentials of user "
        "'admin' with HTTP 401: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to "
        "an account on it"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(tracking.TrackingServerError, match=r"credentials \(none set\)"):
        tracking.setup("never-created")
    status, body = request(
        f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=never-created",
        auth=("admin", ADMIN_PASSWORD),
    )
    assert status == 404, body  # nothing was created with the refused credentials


# --- stopping ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_both_servers_and_all_their_workers(servers):
    """Last in the module: stops the servers the other tests used."""
    both = (servers.pg, servers.auth)
    for s in both:
        assert s.pgid != os.getpgid(s.proc.pid), "mlflow must run in a group of its own"
        assert len(group_members(s.pgid)) > 1, "expected mlflow's worker processes"
        s.terminate()  # both at once: they stop in parallel
    for s in both:
        assert s.stop() == 0, s.text()[-2000:]
        assert "stopping the MLflow tracking server" in s.text()
        assert s.survivors() == []
