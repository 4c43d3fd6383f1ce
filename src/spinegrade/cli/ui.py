"""Open the MLflow UI on the workspace's store: ``python -m spinegrade.cli.ui`` (``make ui``).

Starts ``mlflow server`` on 127.0.0.1 with the workspace's store as backend (the SQLite
database under mlruns/, or ``$MLFLOW_TRACKING_URI``; the database and experiment are created
first if missing) and artifacts read from mlruns/artifacts, waits until it answers, then
prints the links to the runs tables: first the comparison experiment (one run per group and
model, tracking.comparison), then the pipeline experiment's parent runs (one row per DVC
experiment or ``dvc repro``, named after it, with the params that differ from its baseline and
its headline metrics: tracking.store.pipeline_run, log_headline), then the whole pipeline
experiment. (MLflow 3's UI opens on a GenAI landing page that shows no runs; its routes are
hash routes, ``/#/experiments/<id>/runs``, and the runs page reads its search from the query,
``?searchFilter=...``.)

MLflow 3 starts worker processes (uvicorn workers, a job runner, huey queue consumers) that
outlive the ``mlflow`` process when only it is killed. The server therefore runs in its own
process group, and Ctrl-C, SIGTERM or SIGHUP stop the whole group
(``spinegrade.cli.process_group``, shared with the team server ``spinegrade.cli.server``).
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.parse
from pathlib import Path

import yaml

from spinegrade.cli.process_group import HOST, READY_TIMEOUT_S, mlflow_server, port_in_use, serve
from spinegrade.tracking import store as tracking
from spinegrade.tracking.comparison import CHART_VIEW, comparison_experiment

DEFAULT_PORT = 5000

DEFAULT_EXPERIMENT = "spinegrade"


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
    cmd = mlflow_server(uri, host, port, workers)
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


# A runs link as main() prints it (what scripts and tests read from its output).
RUNS_LINK = re.compile(rf"(http://{re.escape(HOST)}:\d+/#/experiments/\d+/runs\S*)\s")


def runs_url(base_url: str, experiment_id: str) -> str:
    """The UI's runs table of one experiment (MLflow 3 hash route)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def experiments_url(base_url: str, experiment_id: str) -> str:
    """The pipeline experiment's parent runs in the chart view: one run per DVC experiment
    (and per ``dvc repro``) listed by name, and a bar chart per headline metric logged on
    them (the table view, first icon, has their params and metrics as columns)."""
    query = {"compareRunsMode": "CHART", "searchFilter": tracking.PARENT_FILTER}
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return f"{runs_url(base_url, experiment_id)}?{encoded}"


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
    compare_name = comparison_experiment(name)
    compare_id = tracking.setup(compare_name)
    base_url = f"http://{HOST}:{args.port}"
    cmd = server_command(uri, args.port, args.workers)
    print(f"starting mlflow server on {base_url} (store {uri})", flush=True)

    def announce(proc) -> None:
        print(
            f"\nMLflow UI, the backbone comparison (experiment '{compare_name}', one run per "
            f"group and model):\n"
            f"    {runs_url(base_url, compare_id)}{CHART_VIEW}\n"
            f"the DVC experiments side by side (experiment '{name}', one parent run per "
            f"dvc exp run or dvc repro, its changed params and headline metrics):\n"
            f"    {experiments_url(base_url, experiment_id)}\n"
            f"every pipeline run, with its fold runs nested (experiment '{name}'):\n"
            f"    {runs_url(base_url, experiment_id)}\n"
            f"(server process group {proc.pid}; Ctrl-C stops it and all its workers)\n",
            flush=True,
        )

    return serve(cmd, base_url, announce, name="MLflow UI", timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
