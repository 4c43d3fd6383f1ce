"""Editing a module re-runs exactly the stages that execute it.

In a copy of the session's finished tiny pipeline, each file under src/ in turn gets a
comment appended; DVC's own status must then name exactly the stages whose import closure
(scripts/stage_deps.py: the stage script's imports, transitively, with package __init__
files and the assets modules read) holds that file, and nothing else. The config schema is
one module per params section, so this also shows that changing one section's schema
re-runs only the stages that read it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from helpers import REPO, copy_workspace

pytestmark = [pytest.mark.slow, pytest.mark.dvc]


def _stage_deps():
    spec = importlib.util.spec_from_file_location("stage_deps", REPO / "scripts" / "stage_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stale(work: Path) -> set[str]:
    """The stages `dvc status` reports as changed, by base name (``train-per-condition``
    for every ``train-per-condition@...`` of the matrix)."""
    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        return {name.split(":")[-1].split("@")[0] for name in repo.status()}


def _touch(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original + b"\n# touched by test_invalidation\n")
    return original


def test_editing_a_module_reruns_exactly_the_stages_whose_closure_holds_it(
    tiny_pipeline, tmp_path
):
    work = copy_workspace(tiny_pipeline, tmp_path / "work")
    cwd = os.getcwd()
    os.chdir(work)  # DVC resolves some paths against the working directory
    try:
        assert _stale(work) == set(), "the finished pipeline is not up to date"
        deps = _stage_deps()
        closures = {
            name: {str(p) for p in deps.code_deps(script, work)}
            for name, script in deps.stage_scripts(work / "dvc.yaml").items()
        }
        files = sorted(
            p
            for p in (work / "src").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
        )
        assert len(files) > 60
        wrong = {}
        for path in files:
            rel = str(path.relative_to(work))
            expected = {
                name
                for name, code in closures.items()
                if any(rel == c or rel.startswith(c + "/") for c in code)
            }
            original = _touch(path)
            try:
                stale = _stale(work)
            finally:
                path.write_bytes(original)
            if stale != expected:
                wrong[rel] = {"re-run": sorted(stale), "imported by": sorted(expected)}
        assert not wrong, wrong
        assert _stale(work) == set()
    finally:
        os.chdir(cwd)
