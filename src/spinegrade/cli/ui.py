"""Open the MLflow UI on the workspace's store: ``python -m spinegrade.cli.ui`` (``make ui``).

Starts ``mlflow server`` on 127.0.0.1 with the workspace's store as backend (the SQLite
database under mlruns/, or ``$MLFLOW_TRACKING_URI``; the database and experiment are created
first if missing) and artifacts read from mlruns/artifacts, waits until it answers, then
prints the link to the experiment's runs table. (MLflow 3's UI opens on a GenAI landing
page that shows no runs; its routes are hash routes, ``/#/experiments/<id>/runs``.)

MLflow 3 starts worker processes (uvicorn workers, a job runner, huey queue consumers) that
outlive the ``mlflow`` process when only it is killed. The server therefore runs in its own
process group, and Ctrl-C, SIGTERM or SIGHUP stop the whole group.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import yaml

from spinegrade.tracking import store as tracking

HOST = "127.0.0.1"

DEFAULT_PORT = 5000

DEFAULT_EXPERIMENT = "spinegrade"

READY_TIMEOUT_S = 120.0

STOP_TIMEOUT_S = 15.0


class UiError(RuntimeError):
    """The UI could not be started; the message says why."""


class _Stop(Exception):
    """Raised by the SIGTERM/SIGHUP handler to leave the wait loop."""


def experiment_name(params: str | Path = "params.yaml") -> str:
    """``mlflow.experiment`` from the params file; the default if the file or key is absent."""
    path = Path(params)
    if not path.is_file():
        return DEFAULT_EXPERIMENT
    raw = yaml.safe_load(path.read_text()) or {}
    section = raw.get("mlflow") or {}
    return str(section.get("experiment") or DEFAULT_EXPERIMENT)


def artifacts_dir(uri: str) -> Path | None:
    """mlruns/artifacts beside a local SQLite store (where tracking.setup puts artifacts)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "artifacts"
    return None


def server_command(uri: str, port: int, workers: int = 1, host: str = HOST) -> list[str]:
    """The ``mlflow server`` command line for backend store ``uri``.

    The UI fetches run artifacts with ``/get-artifact``, which reads each run's own
    artifact URI (``file://.../mlruns/artifacts/<run>/artifacts``), so runs logged straight
    into the SQLite store are viewable. ``--default-artifact-root`` makes experiments
    created through the server use the same directory, and ``--artifacts-destination``
    keeps proxied (``mlflow-artifacts:``) uploads there too instead of in ./mlartifacts.
    """
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    store = artifacts_dir(uri)
    if store is not None:
        cmd += [
            "--default-artifact-root",
            store.as_uri(),
            "--serve-artifacts",
            "--artifacts-destination",
            store.as_uri(),
        ]
    return cmd


def runs_url(base_url: str, experiment_id: str) -> str:
    """The UI's runs table of one experiment (MLflow 3 hash route)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if ``host:port`` cannot be bound (another server listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def start_server(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session, so its process group is its own."""
    return subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)


def wait_ready(proc: subprocess.Popen, base_url: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/health`` until it answers 200; UiError if the server exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise UiError(f"mlflow server exited with code {code} before answering {base_url}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UiError(f"mlflow server did not answer {base_url}/health within {timeout:.0f} s")
        time.sleep(0.5)


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of process group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # fields after the parenthesised command: state ppid pgrp ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after ``timeout``."""
    pgid = proc.pid  # the session leader's pid is its group id
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or it stays a zombie in the group
            if not group_alive(pgid):
                return
            time.sleep(0.2)
    proc.poll()
    if group_alive(pgid):
        print(f"warning: processes of group {pgid} survived SIGKILL", file=sys.stderr)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception (Ctrl-C already raises KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _ignore_signals() -> Iterator[None]:
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    parser.add_argument("--params", default="params.yaml", help="params file naming the experiment")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds to wait for the server to answer (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        print(
            f"error: MLFLOW_TRACKING_URI is a tracking server ({uri}); open it directly",
            file=sys.stderr,
        )
        return 1
    if port_in_use(args.port):
        print(
            f"error: port {args.port} on {HOST} is in use (another MLflow UI?); "
            "stop it or choose another port with --port",
            file=sys.stderr,
        )
        return 1
    name = experiment_name(args.params)
    experiment_id = tracking.setup(name)
    base_url = f"http://{HOST}:{args.port}"
    cmd = server_command(uri, args.port, args.workers)
    print(f"starting mlflow server on {base_url} (store {uri})", flush=True)

    with _stop_on_signals():
        proc = start_server(cmd)
        try:
            wait_ready(proc, base_url, args.timeout)
            print(
                f"\nMLflow UI, runs of experiment '{name}' (id {experiment_id}):\n"
                f"    {runs_url(base_url, experiment_id)}\n"
                f"(server process group {proc.pid}; Ctrl-C stops it and all its workers)\n",
                flush=True,
            )
            code = proc.wait()
            print(f"mlflow server exited with code {code}", file=sys.stderr)
            return code
        except UiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, _Stop):
            print("\nstopping the MLflow UI ...", flush=True)
            return 0
        finally:
            with _ignore_signals():  # a second Ctrl-C must not cut the cleanup short
                stop_group(proc)


if __name__ == "__main__":
    sys.exit(main())
