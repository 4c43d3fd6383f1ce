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

Under ``dvc exp run`` (``--temp`` and ``--queue`` included) the pipeline's parent run is
named after the DVC experiment, with its baseline and the params it changed, and every run
of it carries the experiment's name as tag ``dvc.exp_name`` (``pipeline_run``); outside an
experiment the parent is ``workspace-<key>``. Stages log their headline numbers on the
parent (``log_headline``), so the parent runs compare the experiments side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import psutil
import yaml
from filelock import FileLock
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from spinegrade.core.config.base import flatten
from spinegrade.core.errors import ConfigError
from spinegrade.tracking.system import tag_error

log = logging.getLogger(__name__)

PIPELINE_TAG = "spinegrade.pipeline"

ROLE_TAG = "spinegrade.role"

# The parent runs, one per pipeline run: the runs table with this filter lists one row per
# DVC experiment (or workspace run) with its headline metrics (log_headline).
PARENT_FILTER = f"tags.`{ROLE_TAG}` = 'parent'"

COMMIT_TAG = "git_commit"

# A DVC experiment's name, on every run of it: its parent run, each stage's run, each fold
# run and each comparison row (``tags.`dvc.exp_name` = 'boot200'`` in the UI's search, or
# its group-by). Absent outside an experiment (``tags.`dvc.exp_name` IS NULL``).
EXP_NAME_TAG = "dvc.exp_name"
# On an experiment's parent run: the commit it was run against (DVC's baseline).
EXP_BASELINE_TAG = "dvc.exp_baseline_rev"

# What `dvc exp run` sets in each stage's environment (dvc.env; also for --temp and
# --queue experiments: DVC stashes them with the experiment and every executor passes
# them on). DVC picks a random name when -n is not given, so under an experiment the
# name is always set. Not imported from dvc: importing it configures DVC's logging.
DVC_EXP_NAME, DVC_EXP_BASELINE_REV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"

# a param the baseline has and the experiment does not
REMOVED = "(removed)"
# the changed params an experiment's parent run names in its description (all are params)
NOTE_PARAMS = 10

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


def parent_run(
    experiment_id: str,
    key: str,
    name: str,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> str:
    """Id of the parent run for pipeline run ``key``: found by tag, else created with
    ``tags`` and ``params`` (a found run keeps its own: its key says it is the same run).

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
            experiment_id,
            run_name=name,
            tags={**(tags or {}), PIPELINE_TAG: key, ROLE_TAG: "parent"},
        )
        mine = run.info.run_id
        if params:
            client.log_batch(mine, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(mine)
        oldest = _parents(client, experiment_id, key)[0].info.run_id
        if oldest != mine:
            log.info("another stage created pipeline run %s first: using it", oldest)
            client.delete_run(mine)
        return oldest


def _parents(client: MlflowClient, experiment_id: str, key: str) -> list:
    """The parent runs of pipeline run ``key``, oldest first (ties broken by id)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and {PARENT_FILTER}",
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
    text, DVC's hash of ingest's output (the data every stage descends from) and, under
    ``dvc exp run``, the experiment's name, which are the same for all of them. The
    parent's name, tags and params say which DVC experiment it is (``parent_identity``).
    The tags returned hold the commit, the experiment's name and the DVC hashes of
    ``data_paths``, the data this stage read; every run of the stage carries them.
    """
    experiment_id = setup(experiment)
    data = dvc_hashes(data_paths)
    commit = git_commit()
    params_text = Path(params_path).read_text()
    (source,) = dvc_hashes([PIPELINE_SOURCE]).values()
    exp = dvc_experiment()
    parts = [commit.removesuffix("-dirty"), source, params_text]
    tags = {COMMIT_TAG: commit}
    if exp is not None:  # a workspace run keeps the key it always had
        parts.append(exp[0])
        tags[EXP_NAME_TAG] = exp[0]
    key = pipeline_key(*parts)
    # the first stage creates the parent; the others find it without reading the baseline
    found = _parents(MlflowClient(mlflow.get_tracking_uri()), experiment_id, key)
    if found:
        parent = found[0].info.run_id
    else:
        parent = parent_run(experiment_id, key, *parent_identity(key, commit, params_path, exp))
    tags |= {f"dvc.{p}": h for p, h in data.items()}
    return experiment_id, parent, tags | process_tags()


def dvc_experiment() -> tuple[str, str] | None:
    """(name, baseline revision) of the DVC experiment this process runs a stage of (from
    the environment ``dvc exp run`` gives its stages), or None outside one."""
    name = os.environ.get(DVC_EXP_NAME)
    if not name:
        return None
    return name, os.environ.get(DVC_EXP_BASELINE_REV, "")


def parent_identity(
    key: str, commit: str, params_path: str | Path, exp: tuple[str, str] | None
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(name, tags, params) of a new parent run.

    Under ``dvc exp run`` (``exp`` = (name, baseline revision)) the run is named after the
    experiment, tagged with its name, the baseline and the commit, and the params that
    differ from the baseline's params file are its params. Outside an experiment it is
    ``workspace-<key>``, as DVC calls the row of ``dvc repro``'s results in
    ``dvc exp show``. Its description (the UI's Description, ``mlflow.note.content``) says
    which of the two it is.
    """
    if exp is None:
        note = f"`dvc repro` in the workspace (commit `{commit}`): not a DVC experiment."
        return f"workspace-{key[:8]}", {COMMIT_TAG: commit, MLFLOW_RUN_NOTE: note}, {}
    name, baseline = exp
    before = baseline_params(params_path, baseline) if baseline else None
    params = {}
    if before is not None:
        params = changed_params(_read_yaml(Path(params_path).read_text()), before)
    shown = [f"`{k}`" for k in list(params)[:NOTE_PARAMS]]
    more = len(params) - len(shown)
    changed = ", ".join(shown + ([f"{more} more"] if more else [])) or "none"
    note = (
        f"DVC experiment `{name}` (`dvc exp run`), baseline `{baseline}`, commit `{commit}`. "
        f"Params that differ from the baseline's (logged as params): {changed}."
    )
    tags = {EXP_NAME_TAG: name, COMMIT_TAG: commit, MLFLOW_RUN_NOTE: note}
    if baseline:
        tags[EXP_BASELINE_TAG] = baseline
    return name, tags, params


def _read_yaml(text: str) -> dict:
    # libyaml's parser where PyYAML has it: the pure-Python one is slow on big files
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def baseline_params(params_path: str | Path, rev: str) -> dict | None:
    """The params file as it is at commit ``rev`` (``git show``); {} if the commit has no
    such file (every param was added), None (with a warning) if git cannot show it."""
    path = Path(params_path).resolve()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=path.parent, capture_output=True, text=True)

    shown = git("show", f"{rev}:./{path.name}")
    if shown.returncode == 0:
        return _read_yaml(shown.stdout)
    if git("cat-file", "-e", f"{rev}^{{commit}}").returncode == 0:
        return {}
    log.warning(
        "cannot read %s at the experiment's baseline %s (%s): no params logged on its run",
        path.name,
        rev,
        shown.stderr.strip(),
    )
    return None


def changed_params(params: dict, baseline: dict) -> dict[str, str]:
    """The dotted params (``evaluate.bootstrap_resamples``, as ``-S`` names them) whose
    value differs between ``params`` and ``baseline``, with their value in ``params``
    (``(removed)`` for one only ``baseline`` has), sorted by name."""
    now, before = flatten(params), flatten(baseline)
    missing = object()
    return {
        k: REMOVED if k not in now else str(now[k])
        for k in sorted(now.keys() | before.keys())
        if now.get(k, missing) != before.get(k, missing)
    }


def log_headline(parent: str, metrics: Mapping) -> None:
    """Log a stage's headline numbers on the pipeline's parent run, so the parent runs (one
    per DVC experiment: ``make ui``'s second link) show them side by side.

    Args:
        parent: the parent run's id (``pipeline_run``; the stage's own run is nested under it).
        metrics: metric name -> number; nested mappings are flattened to dotted names and
            what is not a number (a model's name, None) is left out (``numeric``). A name
            logged again (the stage re-ran in the same pipeline run) takes the new value.
    """
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, 0) for k, v in numeric(metrics).items()]
    MlflowClient(mlflow.get_tracking_uri()).log_batch(parent, metrics=values)


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
