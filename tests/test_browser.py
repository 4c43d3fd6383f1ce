"""The comparison in the MLflow UI, rendered by a real browser (Debian's chromium, headless).

A workspace store gets compare-backbones' MLflow rows (tracking.comparison, as the stage
logs them), ``spinegrade.cli.ui`` serves it as ``make ui`` does, and chromium, driven by
Playwright, opens the first link the UI prints (the chart view: ``compareRunsMode=CHART``).
With no click, it must show one row per (group, model), the three backbones' names, a
chart per headline metric and a metric value. The second link (the pipeline experiment's
parent runs, one per DVC experiment) must show the experiments by name, the headline numbers
logged on them and none of the runs nested under them. ``make test`` installs chromium
(apt-get, as root) or stops with a message saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from browser import CHROMIUM_ARGS, MISSING, chromium_path
from helpers import free_port, wait_for_output

from spinegrade.cli.ui import RUNS_LINK
from spinegrade.core import vocab
from spinegrade.evaluation.compare import COLUMNS, display_order
from spinegrade.tracking import store as tracking
from spinegrade.tracking.comparison import comparison_experiment, log_comparison

BACKBONES = ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224"]


def _table() -> pd.DataFrame:
    rows = []
    for g in vocab.GROUPS:
        for i, m in enumerate([*BACKBONES, vocab.ENSEMBLE]):
            row = {c: 0.5 + 0.01 * i for c in COLUMNS}
            row.update(group=g, model=m, verdict="best" if i == 0 else "not distinguishable")
            if (g, m) == ("spinal", "resnet50"):
                row["rsna_group_term"] = 0.4321  # a value to find in the chart's bar labels
            rows.append(row)
    return pd.DataFrame(rows)


pytestmark = [pytest.mark.chromium, pytest.mark.server]


@pytest.fixture
def comparison_store(tmp_path, monkeypatch, no_tracking_uri) -> Path:
    """A workspace whose store holds the comparison runs of one pipeline run."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text("mlflow:\n  experiment: browser-test\n")
    monkeypatch.chdir(ws)
    tracking.setup("browser-test", ws)
    oof = pd.DataFrame({"study_id": [1, 2], "label": [0, 2]})
    table = display_order(_table())  # as compare-backbones gives them
    datasets = {
        (r.group, r.model): (oof, f"models/{r.group}/{r.model}/oof.csv") for r in table.itertuples()
    }
    log_comparison("browser-test", "pipeline-1", table, datasets, {"git_commit": "abc"})
    return ws


@contextlib.contextmanager
def served(ws: Path, tmp_path: Path) -> Iterator[list[str]]:
    """``spinegrade.cli.ui`` on ``ws``'s store, as ``make ui`` runs it: the links it prints
    (comparison, experiments, pipeline), until the block ends."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = tmp_path / "ui.log"
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spinegrade.cli.ui", "--port", str(port)],
            cwd=ws,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_output(proc, log, re.compile(r"server process group"), 120.0)
        yield [m.group(1) for m in RUNS_LINK.finditer(log.read_text())]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@contextlib.contextmanager
def chromium_page() -> Iterator[tuple]:
    """(page, page errors) in headless chromium."""
    if not chromium_path().is_file():
        pytest.fail(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium_path()), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()


def test_the_comparison_shows_in_the_mlflow_ui_without_a_click(comparison_store, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with served(comparison_store, tmp_path) as links, chromium_page() as (page, errors):
        link = links[0]
        experiment = mlflow.get_experiment_by_name(comparison_experiment("browser-test"))
        assert f"/experiments/{experiment.experiment_id}/runs" in link  # the first link
        page.goto(link)
        page.get_by_text("spinal / resnet50").first.wait_for(timeout=60_000)
        try:  # the charts draw after the table: wait for a bar's value label
            page.wait_for_function("document.body.innerText.includes('0.43')", timeout=60_000)
        except PlaywrightTimeout:
            pass  # the assertion below says what is missing
        text = page.inner_text("body")
        shot = os.environ.get("SPINEGRADE_SCREENSHOT")
        if shot:
            page.screenshot(path=shot, full_page=False)
        for b in BACKBONES:
            for g in vocab.GROUPS:
                assert f"{g} / {b}" in text, f"no row for {g} / {b}"
        for metric in ("rsna_group_term", "macro_recall", "macro_f1", "recall_per_gflop"):
            assert metric in text, f"no chart of {metric}"
        assert "0.43" in text, "the rsna group term's value is not shown"
    assert not errors, errors


def test_the_experiments_link_shows_one_row_per_dvc_experiment(
    tmp_path, monkeypatch, no_tracking_uri
):
    """``make ui``'s second link: the parent runs, named after their DVC experiments, with
    the headline numbers logged on them (tracking.store.log_headline), and not the runs
    nested under them."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text("mlflow:\n  experiment: browser-test\n")
    monkeypatch.chdir(ws)
    for name, score in (("boot200", 0.4321), ("lr-3e-4", 0.5678)):
        monkeypatch.setenv(tracking.DVC_EXP_NAME, name)
        with tracking.child_run("browser-test", "params.yaml", [], "nested-stage", "evaluate"):
            pass
        parent = tracking.pipeline_run("browser-test", "params.yaml", [])[1]
        tracking.log_headline(parent, {"rsna_score": score})
    with served(ws, tmp_path) as links, chromium_page() as (page, errors):
        page.goto(links[1])
        page.get_by_text("lr-3e-4").first.wait_for(timeout=60_000)
        try:  # the charts draw after the run list: wait for a bar's value label
            page.wait_for_function("document.body.innerText.includes('0.57')", timeout=30_000)
        except PlaywrightTimeout:
            pass  # the assertion below says what is missing
        text = page.inner_text("body")
    assert "boot200" in text and "rsna_score" in text
    assert "0.57" in text and "0.43" in text, "the headline metric's values are not shown"
    assert "nested-stage" not in text
    assert not errors, errors
