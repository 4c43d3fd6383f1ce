"""Where the time of the last `dvc repro` went, from its MLflow runs.

Prints a Markdown table: per stage (training jobs grouped by stage), the number of runs,
their summed wall time (start to end of each run, so a stage's Python start-up and DVC's
bookkeeping are not in it) and the longest run. Reads the workspace's store (or
$MLFLOW_TRACKING_URI) and the newest pipeline parent run, or the one given by --parent.

    .venv/bin/python benchmarks/stage_times.py [--experiment spinegrade] [--parent RUN_ID]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import mlflow
from mlflow.tracking import MlflowClient

from spinegrade.tracking import store

STAGE_OF_ROLE = {
    "train": "train-per-condition",
    "localizer": "train-localizer",
    "evaluate": "evaluate",
    "compare": "compare-backbones",
    "predict": "predict",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="spinegrade")
    parser.add_argument("--parent", help="pipeline parent run id (default: the newest)")
    args = parser.parse_args()
    experiment_id = store.setup(args.experiment)
    client = MlflowClient(mlflow.get_tracking_uri())
    parent = args.parent
    if parent is None:
        parents = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{store.ROLE_TAG}` = 'parent'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise SystemExit(f"no pipeline run in experiment {args.experiment!r}")
        parent = parents[0].info.run_id
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    totals: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run.info.end_time is None:
            continue
        role = run.data.tags.get(store.ROLE_TAG, "?")
        stage = STAGE_OF_ROLE.get(role, role)
        if stage == "train-per-condition":
            stage += f" ({run.data.tags.get('backbone', '?')})"
        totals[stage].append((run.info.end_time - run.info.start_time) / 1000)
    print(f"runs of pipeline run {parent} ({len(runs)} runs)\n")
    print("| stage | runs | total min | longest run min |")
    print("|---|---:|---:|---:|")
    for stage, seconds in sorted(totals.items()):
        print(f"| {stage} | {len(seconds)} | {sum(seconds) / 60:.1f} | {max(seconds) / 60:.1f} |")
    all_seconds = sum(sum(s) for s in totals.values())
    print(f"| all runs | {sum(len(s) for s in totals.values())} | {all_seconds / 60:.1f} | |")


if __name__ == "__main__":
    main()
