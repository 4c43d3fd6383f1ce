"""Where the time of the last `dvc repro` went, per stage and phase, from its MLflow runs.

Every run carries the host, pid and start time of the process that logged it
(tracking.store.process_tags), so the time of each stage process splits into phases:

- before run: from the process's start to its first MLflow run (Python's imports, reading
  params and data, building the model and counting its FLOPs; for predict, the grading
  itself, which its run only logs);
- in runs: the MLflow runs themselves (training, evaluation, logging);
- the rest of the wall time, from the first stage process's start to the last run's end,
  is outside any stage's runs: DVC's own work (hashing, caching outputs, starting the next
  process) and what a process does after its last run (writing outputs, exiting).

Prints a Markdown table with one row per stage (training jobs grouped by backbone) and
the CPU it ran on. Reads the workspace's store (or $MLFLOW_TRACKING_URI) and the newest
pipeline parent run, or the one given by --parent.

    .venv/bin/python benchmarks/stage_times.py [--experiment spinegrade] [--parent RUN_ID]
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict
from pathlib import Path

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


def cpu_model() -> str:
    """The CPU's model name and whether it has bf16 instructions (AVX-512 bf16 or AMX)."""
    name, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    bf16 = "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no bf16"
    return f"{name} ({bf16})"


def phases(runs: list) -> tuple[dict[str, dict[str, float]], float]:
    """Per stage: processes, seconds before the first run, seconds in runs; and the wall
    time from the first process's start to the last run's end (seconds)."""
    processes: dict[tuple[str, str, str], list] = defaultdict(list)
    for run in runs:
        if run.info.end_time is None:
            continue
        tags = run.data.tags
        key = (
            tags.get(store.HOST_TAG, "?"),
            tags.get(store.PID_TAG, run.info.run_id),  # runs of older versions: one each
            tags.get(store.PROCESS_START_TAG, ""),
        )
        processes[key].append(run)
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    starts, ends = [], []
    for (_, _, started), group in processes.items():
        first = min(r.info.start_time for r in group) / 1000
        last = max(r.info.end_time for r in group) / 1000
        begun = float(started) if started else first
        role = group[0].data.tags.get(store.ROLE_TAG, "?")
        stage = STAGE_OF_ROLE.get(role, role)
        if stage == "train-per-condition":
            stage += f" ({group[0].data.tags.get('backbone', '?')})"
        row = table[stage]
        row["processes"] += 1
        row["before run"] += first - begun
        row["in runs"] += sum((r.info.end_time - r.info.start_time) / 1000 for r in group)
        starts.append(begun)
        ends.append(last)
    wall = max(ends) - min(starts) if starts else 0.0
    return table, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="spinegrade")
    parser.add_argument("--parent", help="pipeline parent run id (default: the newest)")
    args = parser.parse_args(argv)
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
    table, wall = phases(runs)
    print(f"pipeline run {parent}: {len(runs)} runs, on {cpu_model()}\n")
    print("| stage | processes | before run min | in runs min | total min |")
    print("|---|---:|---:|---:|---:|")
    total = defaultdict(float)
    for stage, row in sorted(table.items()):
        both = row["before run"] + row["in runs"]
        print(
            f"| {stage} | {row['processes']:.0f} | {row['before run'] / 60:.1f} "
            f"| {row['in runs'] / 60:.1f} | {both / 60:.1f} |"
        )
        for k in ("processes", "before run", "in runs"):
            total[k] += row[k]
    staged = total["before run"] + total["in runs"]
    print(
        f"| all stages | {total['processes']:.0f} | {total['before run'] / 60:.1f} "
        f"| {total['in runs'] / 60:.1f} | {staged / 60:.1f} |"
    )
    print(f"| outside the stages' runs (DVC, writing, exits) | | | | {(wall - staged) / 60:.1f} |")
    print(f"| wall, first stage start to last run end | | | | {wall / 60:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
