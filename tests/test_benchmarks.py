"""Smoke tests of the scripts in benchmarks/: each runs as its own process, on inputs small
enough for seconds, and must exit 0 and print its table with numbers in it.

A benchmark is not imported by the library, so without these a change below it (the config
becoming pydantic models, a renamed function) breaks it unseen until someone next runs it.
The measured numbers mean nothing at this size; the tests check the table's shape and
that its cells are numbers (or the counts the tiny inputs fix).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO

BENCHMARKS = REPO / "benchmarks"
NUMBER = re.compile(r"-?[\d,]+(\.\d+)?")


def run_benchmark(
    script: str, *args: str, cwd: Path, timeout: float = 180, tmpdir: Path | None = None
) -> str:
    """stdout of ``benchmarks/<script> args`` run in ``cwd``; fails with its output unless it
    exits 0. Its temporary files go to ``tmpdir`` (TMPDIR; default ``cwd/tmp``), and
    MLFLOW_TRACKING_URI is left out, so a store is found from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    tmpdir = tmpdir or cwd / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmpdir)
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
        f"stderr:\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table(text: str, header: list[str]) -> list[dict[str, str]]:
    """The rows of the Markdown table in ``text`` whose header row is ``header``, each as
    {column: cell}; fails if there is no such table or it has no rows."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and _cells(line) == header]
    assert starts, f"no table with the header {header} in:\n{text}"
    i = starts[0]
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]), f"no rule under the header: {text}"
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(header), f"row {line!r} does not fit the header {header}"
        rows.append(dict(zip(header, cells, strict=True)))
    assert rows, f"the table {header} has no rows:\n{text}"
    return rows


def number(cell: str) -> float:
    """A numeric cell as a float (thousands commas and a trailing ``x`` allowed)."""
    text = cell.removesuffix("x")
    assert NUMBER.fullmatch(text), f"not a number: {cell!r}"
    return float(text.replace(",", ""))


def positive(cell: str) -> float:
    value = number(cell)
    assert value > 0, f"not a positive number: {cell!r}"
    return value


# --------------------------------------------------------------------------- data stages


def test_bench_convert(tmp_path):
    """--studies generates a synthetic dataset (the path that crashed on the pydantic
    config) and times the baseline and convert_all on it."""
    out = run_benchmark("bench_convert.py", "--studies", "1", "--workers", "1,2", cwd=tmp_path)
    share = "share of pydicom read's rate"
    rows = table(
        out,
        ["method", "workers", "slices", "seconds", "slices/s", "speed-up vs baseline", share],
    )
    assert [(r["method"], r["workers"]) for r in rows] == [
        ("baseline (dcmread+PNG)", "1"),
        ("pydicom read (dcmread+pixel_array)", "1"),
        ("convert_all (.npy)", "1"),
        ("convert_all (.npy)", "2"),
    ]
    slices = {int(number(r["slices"])) for r in rows}
    assert len(slices) == 1 and slices.pop() > 0  # all read the same files
    for r in rows:
        for col in ("seconds", "slices/s", "speed-up vs baseline"):
            positive(r[col])
        positive(r[share].removesuffix("%"))
    assert rows[0]["speed-up vs baseline"] == "1.00x"
    assert rows[1][share] == "100%"  # the reference the share is of
    assert "data: synthetic, 1 train studies" in out
    assert not list((tmp_path / "tmp").glob("bench_convert.*")), "it left its temporary files"


def test_bench_scale(tmp_path):
    """The five data stages as dvc.yaml runs them, on three small studies."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthesize"].update(sagittal_sizes=[96], axial_sizes=[80], sagittal_slices=[13, 13])
    params["split-folds"]["n_folds"] = 3  # the fewest folds the config allows
    base = tmp_path / "params.yaml"
    base.write_text(yaml.safe_dump(params, sort_keys=False))
    work = tmp_path / "work"
    out = run_benchmark(
        "bench_scale.py",
        *("--studies", "3", "--test-studies", "0", "--workers", "1"),
        *("--params", str(base), "--out", str(work)),
        cwd=tmp_path,
    )
    rows = table(out, ["stage", "wall (min)", "peak memory (GB)", "disk written (GB)", "notes"])
    stages = ["synthesize", "ingest", "convert-dicom", "crop-rois", "split-folds"]
    assert [r["stage"] for r in rows] == [*stages, "**total**"]
    for r in rows:
        number(r["wall (min)"])
        number(r["disk written (GB)"])
        positive(r["peak memory (GB)"].removesuffix(" (max)"))
    notes = {r["stage"]: r["notes"] for r in rows}
    assert notes["synthesize"].endswith(" DICOM files")
    positive(notes["synthesize"].split()[0])
    assert notes["ingest"].startswith("3 train + 0 test studies")
    assert notes["split-folds"] == "3 folds"
    crop_columns = ["group", "crops", "params' shape (GB)", "GPU preset (GB)"]
    crops = table(out, [*crop_columns, extrapolated_column(out)])
    assert [r["group"] for r in crops] == ["spinal", "foraminal", "subarticular", "**total**"]
    assert number(crops[-1]["crops"]) == sum(number(r["crops"]) for r in crops[:-1]) > 0
    assert "Linear extrapolation to 1,975 train" in out
    assert not work.exists(), "bench_scale kept its work directory without --keep"


def extrapolated_column(text: str) -> str:
    """The crop table's extrapolated column, whose name holds the real study count."""
    m = re.search(r"\| (GPU preset at [\d,]+ studies \(GB, extrapolated\)) \|", text)
    assert m, f"no extrapolated column in:\n{text}"
    return m.group(1)


# --------------------------------------------------------------------------- training


def test_bench_train(tmp_path):
    """The loader and one training step at 32 px on the CPU."""
    out = run_benchmark(
        "bench_train.py",
        *("--device", "cpu", "--sizes", "32", "--backbones", "resnet18", "--precisions", "fp32"),
        *("--batch-size", "4", "--steps", "1", "--warmup-steps", "0"),
        *("--loader-batches", "1", "--workers", "0"),
        cwd=tmp_path,
    )
    loader = table(out, ["size px", "batch", "loader workers", "loader images/s"])
    assert [(r["size px"], r["batch"], r["loader workers"]) for r in loader] == [
        ("32", "4", "0 (default)")
    ]
    positive(loader[0]["loader images/s"])
    header = [
        "backbone",
        "size px",
        "batch",
        "precision",
        "step images/s",
        "loader/step",
        "bottleneck",
    ]
    (step,) = table(out, header)
    assert (step["backbone"], step["size px"], step["precision"]) == ("resnet18", "32", "fp32")
    positive(step["step images/s"])
    positive(step["loader/step"])
    assert step["bottleneck"].startswith(("step", "loader"))
    assert "device: cpu;" in out
    assert not list((tmp_path / "tmp").glob("bench_train.*")), "it left its temporary files"


def test_gpu_check(tmp_path):
    """One epoch of the graders' training on ten crops read as crop-rois writes them."""
    crops = tmp_path / "crops"
    crops.mkdir()
    rng = np.random.default_rng(0)
    np.save(crops / "spinal.npy", rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    pd.DataFrame({"study_id": range(12), "label": np.arange(12) % 3}).to_csv(
        crops / "spinal.csv", index=False
    )
    out = run_benchmark(
        "gpu_check.py",
        *("--device", "cpu", "--crops", str(crops), "--n", "10", "--batch-size", "4"),
        *("--backbones", "resnet18", "--precisions", "fp32"),
        cwd=tmp_path,
    )
    header = [
        "backbone",
        "precision",
        "train images/s",
        "eval images/s",
        "peak memory MB",
        "val loss",
        "losses finite",
    ]
    (row,) = table(out, header)
    assert (row["backbone"], row["precision"], row["losses finite"]) == ("resnet18", "fp32", "yes")
    for col in ("train images/s", "eval images/s", "peak memory MB", "val loss"):
        positive(row[col])
    assert f"data: 10 real spinal crops from {crops / 'spinal.npy'}; 8 train / 2 validation" in out
    assert out.rstrip().endswith("result: ok")


# --------------------------------------------------------------------------- MLflow, browser

T0_MS = 1_700_000_000_000


def test_stage_times(tmp_path):
    """The newest pipeline parent's finished runs, per stage and phase, from a store shaped
    as `dvc repro` leaves it: each run names its process (host, pid, start), a grader
    process holds both runs of its fold pair."""
    from mlflow.tracking import MlflowClient

    from spinegrade.tracking.store import (
        HOST_TAG,
        PID_TAG,
        PIPELINE_TAG,
        PROCESS_START_TAG,
        ROLE_TAG,
    )

    store = tmp_path / "mlruns"
    store.mkdir()
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.create_experiment(
        "spinegrade", artifact_location=(store / "artifacts").as_uri()
    )

    def run(name: str, tags: dict, start_s: float, seconds: float | None) -> str:
        start = T0_MS + int(start_s * 1000)
        r = client.create_run(experiment, run_name=name, tags=tags, start_time=start)
        if seconds is not None:
            client.set_terminated(r.info.run_id, end_time=start + int(seconds * 1000))
        return r.info.run_id

    def child(parent, role, pid, started, start, seconds, **tags):
        process = {HOST_TAG: "h", PID_TAG: str(pid), PROCESS_START_TAG: f"{T0_MS / 1000 + started}"}
        tags = {"mlflow.parentRunId": parent, ROLE_TAG: role, **process, **tags}
        run(role, tags, start, seconds)

    old = run("pipeline-old", {PIPELINE_TAG: "old", ROLE_TAG: "parent"}, 0, 0)
    child(old, "train", 1, 0, 10, 6000, backbone="resnet50")  # another pipeline run
    new = run("pipeline-new", {PIPELINE_TAG: "new", ROLE_TAG: "parent"}, 100, 0)
    child(new, "train", 2, 100, 110, 60, backbone="resnet50")  # fold 0: trains the pair
    child(new, "train", 2, 100, 170, 0.2, backbone="resnet50")  # fold 1: replays it
    child(new, "train", 3, 200, 215, 120, backbone="convnext_tiny")
    child(new, "localizer", 4, 340, 350, 240)
    child(new, "evaluate", 5, 600, 605, 60)
    child(new, "predict", 6, 670, 760, 30)  # predict grades before its run opens
    child(new, "predict", 7, 800, 805, None)  # still running: not counted

    out = run_benchmark("stage_times.py", cwd=tmp_path)
    assert f"pipeline run {new}: 7 runs, on " in out
    rows = table(out, ["stage", "processes", "before run min", "in runs min", "total min"])
    assert [tuple(r.values()) for r in rows] == [
        ("evaluate", "1", "0.1", "1.0", "1.1"),
        ("predict", "1", "1.5", "0.5", "2.0"),
        ("train-localizer", "1", "0.2", "4.0", "4.2"),
        ("train-per-condition (convnext_tiny)", "1", "0.2", "2.0", "2.2"),
        ("train-per-condition (resnet50)", "1", "0.2", "1.0", "1.2"),
        ("all stages", "5", "2.2", "8.5", "10.7"),
        ("outside the stages' runs (DVC, writing, exits)", "", "", "", "0.8"),
        ("wall, first stage start to last run end", "", "", "", "11.5"),
    ]  # the older pipeline run's 100 min are in no row


@pytest.mark.chromium
def test_bench_review_page(tmp_path):
    """The review page of test_review_page's four made-up studies, one fresh browser."""
    from test_review_page import build_review

    from spinegrade.inference.page import write_page

    page = write_page(tmp_path / "review.html", *build_review())
    # chromium's profile socket must fit a unix socket path (about 107 bytes): a short
    # TMPDIR of its own, not one below pytest's (long, under xdist) tmp_path
    with tempfile.TemporaryDirectory(prefix="sg-") as short:
        out = run_benchmark(
            "bench_review_page.py",
            *(str(page), "--repeats", "1", "--studies", "2"),
            cwd=tmp_path,
            tmpdir=Path(short),
        )
    rows = {r["measure"]: r["value"] for r in table(out, ["measure", "value"])}
    assert rows["studies (review-index)"] == "4"
    assert positive(rows["page size (MB)"]) == pytest.approx(page.stat().st_size / 1e6, abs=0.01)
    assert re.fullmatch(r"\d+ \(study-\d+\)", rows["largest study data block (KB)"])
    for measure in (
        "load: goto to overview ready, wall (ms)",
        "load: DOMContentLoaded end, navigation timing (ms)",
        "load: load event end, navigation timing (ms)",
        "study open, median of 2 (ms)",
        "study open, max of 2 (ms)",
        "JS heap after opening 2, Runtime.getHeapUsage after GC (MB)",
    ):
        positive(rows[measure])


@pytest.mark.server
def test_bench_serve(tmp_path, tiny_dataset, tiny_ingest):
    """Predict and the service on small untrained models (helpers.write_bundle, laid out as
    `make repro` leaves them) and the tiny dataset's test studies: one and two clients."""
    from helpers import write_bundle

    from spinegrade.inference.files import BundleFiles

    ws = tmp_path / "ws"
    write_bundle(ws, tiny_ingest, BundleFiles.workspace(ws))
    (ws / "data" / "raw").symlink_to(tiny_dataset)
    n = len(pd.read_csv(tiny_dataset / "test_series_descriptions.csv")["study_id"].unique())
    args = ["--workspace", str(ws), "--clients", "1,2", "--requests", "3"]
    args += ["--memory-after", "1,4", "--warm-repeats", "1"]
    out = run_benchmark("bench_serve.py", *args, cwd=tmp_path, timeout=300)

    assert "avx512_bf16: " in out.splitlines()[0]
    predict = {r["measure"]: r["value"] for r in table(out, ["measure", "value"])}
    assert positive(predict[f"cold, {n} studies: wall of the command, model load included (s)"])
    assert positive(
        predict["warm: studies per minute over all those passes (predict's batch rate)"]
    )
    # predict's warm passes are timed before the service starts and again after it stops
    for when in ("before", "after"):
        (row,) = [m for m in predict if m.startswith(f"warm, {when} the service: s per study")]
        assert positive(predict[row])
    header = ["clients", "uploads", "wall (s)", "studies/min", "p50 (s)", "p95 (s)", "max (s)"]
    header += ["service p50 (s)", "200", "503 (retried)", "other", "load average"]
    served = {r["clients"]: r for r in table(out, header)}
    # 1 + 2 clients answer 6 uploads; the memory count of 4 is reached within them
    assert sorted(served) == ["1", "2"], served
    for row in served.values():
        assert row["uploads"] == "3" and row["other"] == "0", row
        assert int(row["200"]) >= 3 and positive(row["p50 (s)"])
    # the service's rows are predict's for the same study
    (diff,) = re.findall(r"max \|difference\| (\S+) over (\d+) studies", out)
    assert float(diff[0]) < 1e-6 and int(diff[1]) == n
    memory = {r["measure"]: r["MB"] for r in table(out, ["measure", "MB"])}
    (after,) = [m for m in memory if m.startswith("after 4 uploads answered 200")]
    assert positive(memory[after])
    goals = {r["goal"]: r for r in table(out, ["goal", "measured", "met"])}
    assert goals["p50, 1 client <= 1.5 s a study"]["met"] in ("yes", "NO")
    assert goals["throughput, 4 clients"]["measured"] == "n/a (no 4-client scenario)"
