"""MLflow plumbing: the store, one parent run per pipeline run, and run provenance.

The default store is SQLite under the *workspace's* mlruns/ (MLflow 3 refuses a bare file
store), with artifacts beside it. DVC runs queued or temporary experiments in a copy of the
repository under ``<workspace>/.dvc/tmp/exps/``; such runs are pointed back at the
workspace's store, so they are not written into the copy and lost.
``MLFLOW_TRACKING_URI`` overrides all of this. For a tracking server (http/https) ``setup``
first checks with one request through MLflow's client, no retries (10 s to connect and to
answer), that it answers and accepts the credentials (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``), so a dead server fails a stage with one line instead of minutes
of MLflow's retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import yaml
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from spinegrade.core.config.base import flatten
from spinegrade.core.errors import ConfigError
from spinegrade.tracking.system import tag_error

log = logging.getLogger(__name__)

PIPELINE_TAG = "spinegrade.pipeline"

ROLE_TAG = "spinegrade.role"

# The process that logged a run: host, pid and its start (epoch seconds). They tell a run
# whose process died (SIGKILL, a lost machine) from one still running, and how long the
# process ran before its run started (benchmarks/stage_times.py).
HOST_TAG, PID_TAG, PROCESS_START_TAG = "spinegrade.host", "spinegrade.pid", "spinegrade.started"

# On the second fold of a scored pair: the run that trained the model both folds share.
TRAINED_IN_TAG = "spinegrade.trained_in_run"

# ingest's output: its DVC hash identifies the data a pipeline run descends from.
PIPELINE_SOURCE = "data/ingest"

DVC_EXPS_DIR = (".dvc", "tmp", "exps")

# seconds to connect and to answer (MLFLOW_HTTP_REQUEST_TIMEOUT, whole seconds): a dead server
# fails within seconds, a slow one gets time to answer
SERVER_CHECK_TIMEOUT_S = 10


class TrackingServerError(ConfigError):
    """The tracking server of MLFLOW_TRACKING_URI is unreachable, refuses the credentials or
    fails; an expected error (a ConfigError), so a stage prints it as one line."""


def workspace_root(path: str | Path | None = None) -> Path:
    """The DVC workspace that owns ``path`` (default: cwd), also from inside an exp copy."""
    path = Path(path or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_EXPS_DIR) + 1):
        if parts[i : i + len(DVC_EXPS_DIR)] == DVC_EXPS_DIR:
            return Path(*parts[:i])
    return path


def tracking_uri(root: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workspace>/mlruns/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{workspace_root(root) / 'mlruns' / 'mlflow.db'}"


def redact(uri: str) -> str:
    """``uri`` with the password of its user part (``user:secret@host``) shown as ``***``."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.password:
        return uri
    user = parts.netloc.rpartition("@")[0].split(":", 1)[0]
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """The environment with ``values`` set inside the block, as it was after it."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _unreachable(exc: BaseException) -> str | None:
    """Why no HTTP answer came, from the exceptions under MLflow's (innermost first): the
    socket error (``[Errno 111] Connection refused``, a name that does not resolve) or
    urllib3's timeout; None when the server did answer."""
    import requests
    import urllib3.exceptions

    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if not any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in chain):
        return None
    for err in reversed(chain):
        if isinstance(err, OSError) and err.errno is not None:
            return str(err)
        timeout = (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError)
        if isinstance(err, timeout) and not isinstance(err, urllib3.exceptions.NewConnectionError):
            pool = getattr(err, "pool", None)  # "<pool>: Read timed out. (read timeout=5)"
            return str(err.args[-1]).removeprefix(f"{pool}: " if pool else "")
    return " ".join(str(chain[-1]).split())


def check_server(uri: str, timeout: int = SERVER_CHECK_TIMEOUT_S) -> None:
    """One request, no retries, to the tracking server ``uri`` with MLflow's credentials
    (MlflowClient.search_experiments, ``timeout`` seconds to connect and to answer);
    TrackingServerError naming the URI if it does not answer, refuses them or fails."""
    name = f"MLflow tracking server {redact(uri)} (MLFLOW_TRACKING_URI)"
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    try:
        with _environment(**retries):
            MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        status = exc.get_http_status_code()
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            user = read_mlflow_creds().username  # the environment, else ~/.mlflow/credentials
            who = f"of user '{user}'" if user else "(none set)"
            raise TrackingServerError(
                f"{name} refused the credentials {who} with HTTP {status}: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account on it"
            ) from None
        if (why := _unreachable(exc)) is not None:
            raise TrackingServerError(f"{name} is not reachable: {why}") from None
        hint = ": is it an MLflow server?" if exc.error_code == "ENDPOINT_NOT_FOUND" else ""
        detail = " ".join(exc.message.split())[:300]
        raise TrackingServerError(f"{name} answered with an error{hint} ({detail})") from None


def local_store_dir(uri: str) -> Path | None:
    """The directory of a local SQLite store (None for any other store)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent
    return None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock next to a local SQLite store (no-op for remote stores)."""
    store = local_store_dir(uri)
    if store is None:
        yield
        return
    store.mkdir(parents=True, exist_ok=True)
    with FileLock(store / ".lock"):
        yield


def setup(experiment: str, root: str | Path | None = None) -> str:
    """Point MLflow at the store, creating the database and experiment once; return its id.

    Creation happens under a file lock, so runs started in parallel do not race to create
    the SQLite schema (which fails). Artifacts of a local store go to ``mlruns/artifacts``;
    a tracking server chooses its own (``mlflow-artifacts:``, proxied by the server), after
    ``check_server``.
    """
    uri = tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which would pin this store
    # for every later call and every child process: keep the environment as it was.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    with _store_lock(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        store = local_store_dir(uri)
        location = (store / "artifacts").as_uri() if store else None
        try:
            return client.create_experiment(experiment, artifact_location=location)
        except MlflowException as exc:  # a parallel stage created it first (remote: no lock)
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(experiment).experiment_id


def parent_run(experiment_id: str, key: str, name: str) -> str:
    """Id of the parent run for pipeline run ``key``: found by tag, else created.

    The file lock serializes stages on one machine's store; against a tracking server,
    stages on several machines (or processes without a shared lock) may both find none
    and both create one. Each creator then looks again and keeps the oldest parent (by
    start time, then id), deleting its own if another is older: all of them agree on one.
    """
    uri = mlflow.get_tracking_uri()
    with _store_lock(uri):
        client = MlflowClient(uri)
        found = _parents(client, experiment_id, key)
        if found:
            return found[0].info.run_id
        run = client.create_run(
            experiment_id, run_name=name, tags={PIPELINE_TAG: key, ROLE_TAG: "parent"}
        )
        client.set_terminated(run.info.run_id)
        mine = run.info.run_id
        oldest = _parents(client, experiment_id, key)[0].info.run_id
        if oldest != mine:
            log.info("another stage created pipeline run %s first: using it", oldest)
            client.delete_run(mine)
        return oldest


def _parents(client: MlflowClient, experiment_id: str, key: str) -> list:
    """The parent runs of pipeline run ``key``, oldest first (ties broken by id)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'parent'",
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def git_commit(root: str | Path | None = None) -> str:
    """HEAD's commit (with ``-dirty`` when tracked files changed), or ``unknown``."""
    cwd = str(root or os.getcwd())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        # dvc.lock and reports/ change as the pipeline runs: they do not make the code dirty.
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!dvc.lock",
                ":!reports",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def dvc_hashes(paths: list[str], root: str | Path | None = None) -> dict[str, str]:
    """DVC's md5 of each output path as recorded in dvc.lock, or a content hash of the path.

    dvc.lock is updated as each stage finishes, so a later stage sees its inputs' hashes.
    """
    root = Path(root or os.getcwd())
    recorded: dict[str, str] = {}
    lock = root / "dvc.lock"
    if lock.is_file():
        # libyaml's parser where PyYAML has it: dvc.lock lists every stage's modules, and
        # the pure-Python one took half a second a read, in every stage process
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for stage in (yaml.load(lock.read_text(), Loader=loader) or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                recorded[out["path"]] = out.get("md5", "")
    return {p: recorded.get(p) or "sha256:" + content_hash(root / p) for p in paths}


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a directory's relative paths and file contents."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def pipeline_key(*parts: str) -> str:
    """A short stable id for one pipeline run from its commit, data hashes and params."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def pipeline_run(
    experiment: str, params_path: str | Path, data_paths: list[str]
) -> tuple[str, str, dict[str, str]]:
    """(experiment id, parent run id, provenance tags) of the current pipeline run.

    Stages of one ``dvc repro`` share the parent: its key is the commit, the params file's
    text and DVC's hash of ingest's output (the data every stage descends from), which
    are the same for all of them. The tags hold the DVC hashes of ``data_paths``, the data
    this stage read.
    """
    experiment_id = setup(experiment)
    data = dvc_hashes(data_paths)
    commit = git_commit()
    params_text = Path(params_path).read_text()
    (source,) = dvc_hashes([PIPELINE_SOURCE]).values()
    key = pipeline_key(commit.removesuffix("-dirty"), source, params_text)
    parent = parent_run(experiment_id, key, name=f"pipeline-{key[:8]}")
    tags = {"git_commit": commit, **{f"dvc.{p}": h for p, h in data.items()}}
    return experiment_id, parent, tags | process_tags()


def process_tags() -> dict[str, str]:
    """This process's host, pid and start time, as run tags."""
    me = psutil.Process()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(me.pid),
        PROCESS_START_TAG: f"{me.create_time():.3f}",
    }


def _process_gone(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name has ended (only judged on this host: a pid on
    another machine says nothing here)."""
    if tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in tags:
        return False
    try:
        started = psutil.Process(int(tags[PID_TAG])).create_time()
    except (psutil.NoSuchProcess, ValueError):
        return True
    return abs(started - float(tags.get(PROCESS_START_TAG, "nan"))) > 1.0  # pid reused


def end_orphans(experiment_id: str, name: str) -> list[str]:
    """End as KILLED (MLflow's status for it) every RUNNING run named ``name`` whose
    process is gone: a stage killed with SIGKILL never ends its run, and the next run of
    that stage does. Logs each one; returns their ids."""
    client = MlflowClient(mlflow.get_tracking_uri())
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{name}' and attributes.status = 'RUNNING'",
    )
    ended = []
    for run in running:
        if _process_gone(run.data.tags):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning(
                "MLflow run %s (%s) was left RUNNING by process %s, which has ended: marked KILLED",
                run.info.run_id,
                name,
                run.data.tags.get(PID_TAG),
            )
            ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def child_run(
    experiment: str,
    params_path: str | Path,
    data_paths: list[str],
    name: str,
    role: str,
    tags: dict[str, str] | None = None,
    log_system_metrics: bool | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run ``name`` nested under the pipeline's parent run (see pipeline_run),
    tagged with provenance and ``spinegrade.role`` = ``role``. An exception inside ends
    the run FAILED (KILLED for Ctrl-C) with the error as tag ``error``, and re-raises."""
    experiment_id, parent, base = pipeline_run(experiment, params_path, data_paths)
    end_orphans(experiment_id, name)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        parent_run_id=parent,
        tags={**base, ROLE_TAG: role, **(tags or {})},
        log_system_metrics=log_system_metrics,
    ) as run:
        try:
            yield run
        except BaseException as exc:
            tag_error(exc)
            raise


def numeric(report: dict) -> dict[str, float]:
    """The numbers of a nested report, flattened to MLflow metric names."""
    return {
        k.replace(" ", "_"): float(v)
        for k, v in flatten(report).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
