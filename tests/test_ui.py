"""spinegrade.cli.ui: the MLflow UI on a workspace's store, its printed link, and a clean stop.

The end-to-end test starts ``python -m spinegrade.cli.ui`` on a free port of 127.0.0.1 against a
temporary workspace, checks the REST API, the link and an artifact download through the
server, then sends SIGTERM and asserts that no process of the server's group survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import mlflow
import psutil
import pytest
from helpers import free_port, group_members, wait_for_output

from spinegrade.cli import ui
from spinegrade.tracking import store as tracking

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0
LINK = re.compile(r"(http://127\.0\.0\.1:(\d+)/#/experiments/(\d+)/runs)\S*\s")
GROUP = re.compile(r"server process group (\d+)")


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def post_json(url: str, body: dict, timeout: float = 30) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """True once no process (not even a zombie) of group ``pgid`` exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def kill_everything(proc: subprocess.Popen, pgid: int | None) -> None:
    """After a failure: SIGKILL the ui process's group and every group its children lead."""
    groups = {proc.pid} | ({pgid} if pgid else set())
    with contextlib.suppress(psutil.Error):
        groups |= {os.getpgid(c.pid) for c in psutil.Process(proc.pid).children(True)}
    for g in groups - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --- units ----------------------------------------------------------------------------------


def test_runs_url_and_server_command():
    assert (
        ui.runs_url("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
    )
    cmd = ui.server_command("sqlite:////ws/mlruns/mlflow.db", 5123)
    assert cmd[1] == "server"
    assert "--serve-artifacts" in cmd
    args = {a: b for a, b in zip(cmd, cmd[1:], strict=False) if a.startswith("--")}
    assert args["--backend-store-uri"] == "sqlite:////ws/mlruns/mlflow.db"
    assert args["--host"] == "127.0.0.1"
    assert args["--port"] == "5123"
    assert args["--default-artifact-root"] == "file:///ws/mlruns/artifacts"
    assert args["--artifacts-destination"] == "file:///ws/mlruns/artifacts"
    assert "--default-artifact-root" not in ui.server_command("postgresql://db/mlflow", 5123)


def test_the_experiments_link_lists_the_parent_runs(tmp_path, no_tracking_uri):
    """The second link: the pipeline experiment's chart view searched for its parent runs,
    one per DVC experiment (the UI reads ``searchFilter`` from the route's query)."""
    url = ui.experiments_url("http://127.0.0.1:5000/", "7")
    route, _, query = url.partition("?")
    assert route == ui.runs_url("http://127.0.0.1:5000", "7")
    assert urllib.parse.parse_qs(query) == {
        "compareRunsMode": ["CHART"],
        "searchFilter": [tracking.PARENT_FILTER],
    }
    assert ui.RUNS_LINK.fullmatch(url + "\n") and " " not in url  # one word on its line
    # the filter selects exactly the parent runs, not what is nested under them
    exp = tracking.setup("exp", tmp_path)
    parent = tracking.parent_run(exp, "key", "boot200")
    with mlflow.start_run(experiment_id=exp, parent_run_id=parent, run_name="evaluate"):
        pass
    found = mlflow.search_runs([exp], filter_string=tracking.PARENT_FILTER)
    assert list(found["run_id"]) == [parent]


def test_experiment_name_from_params(tmp_path):
    assert ui.experiment_name(tmp_path / "missing.yaml") == "spinegrade"
    (tmp_path / "p.yaml").write_text("mlflow:\n  experiment: other\n")
    assert ui.experiment_name(tmp_path / "p.yaml") == "other"
    (tmp_path / "q.yaml").write_text("data:\n  source: synthetic\n")
    assert ui.experiment_name(tmp_path / "q.yaml") == "spinegrade"


def test_port_in_use_is_reported(tmp_path, monkeypatch, capsys, no_tracking_uri):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ui.main(["--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err
    assert not (tmp_path / "mlruns").exists()  # nothing created, nothing started


def test_remote_tracking_uri_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert ui.main(["--port", str(free_port())]) == 1
    assert "tracking server" in capsys.readouterr().err


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.server
def test_ui_serves_runs_and_artifacts_and_stops_its_whole_group(tmp_path, no_tracking_uri):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text("mlflow:\n  experiment: ui-test\n")
    tracking.setup("not-this-one", ws)  # so the experiment's id is not simply the first one
    exp_id = tracking.setup("ui-test", ws)
    with mlflow.start_run(experiment_id=exp_id, run_name="ui-run") as run:
        mlflow.log_metric("recall", 0.5)
        mlflow.log_text("hello from the ui test", "notes/hello.txt")
    run_id = run.info.run_id

    port = free_port()
    log = tmp_path / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [
        sys.executable,
        "-m",
        "spinegrade.cli.ui",
        "--port",
        str(port),
        "--params",
        "params.yaml",
    ]
    pgid, stopped = None, False
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        link, link_port, link_exp = wait_for_output(proc, log, LINK, START_TIMEOUT_S).groups()
        pgid = int(GROUP.search(log.read_text()).group(1))
        assert pgid != os.getpgid(proc.pid), "the server must run in its own process group"
        assert len(group_members(pgid)) > 1, "expected mlflow's worker processes in the group"

        # the links: this port, first the comparison experiment, then the one from params.yaml
        # searched for its parent runs (the DVC experiments), then all of it
        assert int(link_port) == port
        assert link_exp == tracking.setup("ui-test-comparison", ws)
        links = [m.groups() for m in LINK.finditer(log.read_text())]
        assert [exp for _, _, exp in links] == [link_exp, exp_id, exp_id]
        assert ui.experiments_url(f"http://127.0.0.1:{port}", exp_id) in log.read_text()
        link = links[2][0]  # the run logged above is in the pipeline experiment
        status, page = get(link)  # the fragment stays in the browser; the server sends the app
        assert status == 200
        assert b'<div id="root"' in page
        # ... and the app it sends routes /experiments/:experimentId/runs, with hash history
        main_js = re.search(rb'src="\.?/?(static-files/static/js/main\.[0-9a-f]+\.js)"', page)
        assert main_js, page[:500]
        status, bundle = get(f"http://127.0.0.1:{port}/{main_js.group(1).decode()}")
        assert status == 200
        assert b'"/experiments/:experimentId/runs"' in bundle
        assert b"location.hash.substr(1)" in bundle

        base = f"http://127.0.0.1:{port}"
        found = post_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})
        runs = found["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert runs[0]["data"]["metrics"][0]["key"] == "recall"
        # the experiments link's search is one the server accepts (the run is no parent)
        search = {"experiment_ids": [exp_id], "filter": tracking.PARENT_FILTER}
        assert "runs" not in post_json(f"{base}/api/2.0/mlflow/runs/search", search)

        # artifacts: listed, and downloadable the way the UI fetches them (get-artifact)
        query = urllib.parse.urlencode({"run_id": run_id})
        status, listing = get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?{query}")
        assert [f["path"] for f in json.loads(listing)["files"]] == ["notes"]
        query = urllib.parse.urlencode({"path": "notes/hello.txt", "run_uuid": run_id})
        status, body = get(f"{base}/get-artifact?{query}")
        assert (status, body) == (200, b"hello from the ui test")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0
        if not wait_group_gone(pgid, 10):
            # only zombies may be left, for an init that does not reap orphans
            survivors = group_members(pgid)
            assert not survivors, [" ".join(p.cmdline()) for p in survivors]
        stopped = True
    finally:
        if not stopped:
            kill_everything(proc, pgid)
