"""Fixtures and hooks: a tiny synthetic dataset and the data stages run on it, once per
session (helpers.py holds the functions tests import).

The params are the real ones shrunk (few studies, small images, one worker), so every test
exercises the same code the pipeline runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from browser import MISSING, chromium_path
from helpers import build_tiny_pipeline, postgres_problem, tiny_synthetic

from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.data.convert import convert_all
from spinegrade.data.crops import build_crops
from spinegrade.data.ingest import ingest
from spinegrade.synthetic.dataset import generate_dataset

# Fixtures that bring what a marker names: a test that takes one (directly or through
# another fixture) is marked here, so no test can forget to say what it needs.
FIXTURE_MARKERS = {
    "pg_database": "postgres",
    "launched": "server",
    "servers": "server",
    "tiny_pipeline": "dvc",
}


# The modules whose set-up runs the whole pipeline (several minutes each on 2 cores): run
# first, each in its own pytest-xdist process, while the other processes share out the
# rest. (The Makefile's --no-loadscope-reorder keeps this order; xdist would otherwise
# start the modules with the most tests first, and these two would finish last.)
FIRST = ("test_pipeline.py", "test_team.py")


def pytest_collection_modifyitems(config, items):
    """The FIRST modules first, then markers from the fixtures a test takes
    (FIXTURE_MARKERS). Tests marked ``gpu`` need CUDA: where none is visible they are
    skipped with that reason (shown in the summary); they add to the CPU tests, which cover
    the same paths."""
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the rest keep order
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine; make gpu-check)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _missing(needs: set[str]) -> str | None:
    """One line saying how to get the first of ``needs`` (postgres, chromium) this machine
    lacks, or None."""
    if "postgres" in needs and (problem := postgres_problem()):
        return problem
    if "chromium" in needs and not chromium_path().is_file():
        return f"{MISSING} (or set CHROMIUM to a chromium binary)"
    return None


def pytest_collection_finish(session):
    """Stop at once, in one line, when a selected test needs PostgreSQL or chromium and
    the machine lacks it: never a skip, and never minutes of other tests first. (Under
    pytest-xdist the controller checks before the workers start: pytest_sessionstart.)"""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    needs = {m for item in session.items for m in ("postgres", "chromium") if m in item.keywords}
    if problem := _missing(needs):
        pytest.exit(problem, returncode=4)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """The xdist controller collects nothing itself: it checks what the -m expression may
    select (everything, unless it says ``not postgres`` / ``not chromium``), before any
    worker starts."""
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or not config.getoption("numprocesses", None):
        return
    expr = config.getoption("markexpr") or ""
    needs = {m for m in ("postgres", "chromium") if f"not {m}" not in expr}
    if problem := _missing(needs):
        pytest.exit(problem, returncode=4)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A generated RSNA-layout dataset (read-only for tests: copy before changing it)."""
    root = tmp_path_factory.mktemp("tiny") / "raw"
    return generate_dataset(tiny_synthetic(), root)


@pytest.fixture(scope="session")
def tiny_ingest(tiny_dataset):
    return ingest(tiny_dataset)


@pytest.fixture(scope="session")
def tiny_volumes(tiny_dataset, tiny_ingest, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("volumes") / "volumes"
    report = convert_all(tiny_ingest.series, tiny_dataset, out, workers=1)
    return out, report


@pytest.fixture(scope="session")
def tiny_crops(tiny_ingest, tiny_volumes):
    out, _ = tiny_volumes
    slices = pd.read_csv(out / "slices.csv")
    return build_crops(tiny_ingest.labels, slices, out, CropConfig(slices=3, size_px=32))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The whole pipeline run once per session by `dvc repro` on tiny data (one epoch, the
    configured backbones): read it, or change a copy (helpers.copy_workspace)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture
def no_tracking_uri(monkeypatch):
    """No MLFLOW_TRACKING_URI, and none set through mlflow.set_tracking_uri (tracking.setup
    calls it; it keeps the URI in MLflow's module *and* exports it): forgotten before the
    test and again after it."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "placeholder")  # so teardown restores the original
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    yield
    mlflow.set_tracking_uri(None)
