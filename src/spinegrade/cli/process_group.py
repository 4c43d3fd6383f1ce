"""A server in its own process group: start it, wait until it answers, stop the whole group.

Shared by ``spinegrade.cli.ui`` (``make ui``) and ``spinegrade.cli.server`` (``make
mlflow-server``). MLflow 3's ``mlflow server`` starts worker processes (uvicorn workers, a job
runner, huey queue consumers) that outlive the ``mlflow`` process when only it is killed, so
the server runs as the leader of a new session and Ctrl-C, SIGTERM or SIGHUP stop its whole
process group.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import psutil

HOST = "127.0.0.1"

READY_TIMEOUT_S = 120.0

STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """The server could not be started; the message says why."""


class _Stop(Exception):
    """Raised by the SIGTERM/SIGHUP handler to leave the wait loop."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if ``host:port`` cannot be bound (another server listens there)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on now (for a server about to start)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new session, so its process group is its own."""
    return subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)


def wait_ready(proc: subprocess.Popen, base_url: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/health`` until it answers 200; ServerError if the server exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerError(f"mlflow server exited with code {code} before answering {base_url}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(
                f"mlflow server did not answer {base_url}/health within {timeout:.0f} s"
            )
        time.sleep(0.5)


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        # a process may end between the listing and the question: it is no member then
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of process group ``pgid`` exists."""
    return bool(group_members(pgid))


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


def serve(
    cmd: list[str],
    base_url: str,
    announce: Callable[[subprocess.Popen], None],
    *,
    name: str = "mlflow server",
    timeout: float = READY_TIMEOUT_S,
    **popen_kwargs,
) -> int:
    """Run ``cmd`` in its own process group until it exits or we are told to stop.

    Waits until ``base_url`` answers, calls ``announce(proc)`` (print the links), then waits.
    Ctrl-C, SIGTERM and SIGHUP stop the whole group and return 0; a server that exits on its
    own returns its exit code; one that never answers prints why and returns 1.
    """
    with _stop_on_signals():
        proc = start_server(cmd, **popen_kwargs)
        try:
            wait_ready(proc, base_url, timeout)
            announce(proc)
            code = proc.wait()
            print(f"mlflow server exited with code {code}", file=sys.stderr)
            return code
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, _Stop):
            print(f"\nstopping the {name} ...", flush=True)
            return 0
        finally:
            with _ignore_signals():  # a second Ctrl-C must not cut the cleanup short
                stop_group(proc)


def mlflow_server(backend_uri: str, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` (this environment's) on ``backend_uri`` at ``host:port``."""
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
