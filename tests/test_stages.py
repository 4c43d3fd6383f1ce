"""The four data stages end to end: through their CLIs and through `dvc repro`.

A shrunken copy of params.yaml (tiny synthetic data, one worker) drives the real stage
scripts and the real dvc.yaml.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import assert_no_identifiers, dvc_workspace, header_identifiers, run_dvc

from spinegrade.core.config import Params

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ("crop-rois", "split-folds")  # with their upstream: the four data stages
TINY = {
    "n_train_studies": 6,
    "n_test_studies": 1,
    "workers": 1,
    "sagittal_sizes": [96, 112],
    "axial_sizes": [80, 96],
}


def shrink(params: dict, **data) -> None:
    """Tiny data, one worker, small crops (edits parsed params in place)."""
    params["synthesize"].update(TINY)
    params["convert-dicom"]["workers"] = 1
    params["split-folds"]["n_folds"] = 3
    params["crop-rois"]["size_px"] = 32
    params["data"].update(data)
    params["engine"]["device"] = "cpu"
    params["engine"]["precision"] = "fp32"  # tiny crops: see conftest.dvc_workspace


def tiny_params(dest: Path, **data) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    shrink(params, **data)
    path = dest / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_stage_clis_chain_and_leak_no_identifiers(tmp_path):
    tiny_params(tmp_path)
    for script in (
        "synthesize.py",
        "ingest.py",
        "convert_dicom.py",
        "crop_rois.py",
        "split_folds.py",
    ):
        proc = run_stage(script, tmp_path)
        assert proc.returncode == 0, proc.stderr
    outputs = [
        p for d in ("ingest", "volumes", "crops") for p in (tmp_path / "data" / d).rglob("*")
    ]
    outputs += [tmp_path / "data" / "folds.csv", *(tmp_path / "reports").glob("*")]
    assert_no_identifiers(
        [p for p in outputs if p.is_file()], header_identifiers(tmp_path / "data" / "raw")
    )
    report = json.loads((tmp_path / "reports" / "crop-rois.json").read_text())
    assert sum(g["crops"] for g in report["groups"].values()) > 0
    folds = pd.read_csv(tmp_path / "data" / "folds.csv")
    assert folds["study_id"].is_unique and len(folds) == 6


@pytest.mark.slow
def test_rsna_source_reads_a_download_in_place(tmp_path):
    download = tmp_path / "download"
    tiny_params(tmp_path)
    assert run_stage("synthesize.py", tmp_path).returncode == 0
    shutil.move(tmp_path / "data" / "raw", download)
    before = digest(download)
    tiny_params(tmp_path, source="rsna", root=str(download))
    assert run_stage("synthesize.py", tmp_path).returncode == 0
    proc = run_stage("ingest.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "data" / "ingest" / "source.json").read_text()) == {
        "source": "rsna",
        "images_root": str(download),
    }
    assert [p.name for p in (tmp_path / "data" / "raw").iterdir()] == ["SOURCE.txt"]
    assert run_stage("convert_dicom.py", tmp_path).returncode == 0
    assert digest(download) == before  # read in place, untouched


@pytest.mark.slow
def test_localizer_stage_under_torchrun_writes_once_and_logs_one_run(tmp_path):
    """train-localizer with engine.nproc_per_node 2 (gloo on the CPU): rank 0 alone writes
    the localizer and logs its run; the validation fold is gathered from both processes."""
    path = tiny_params(tmp_path)
    params = yaml.safe_load(path.read_text())
    loc = params["train-localizer"]
    loc.update(batch_size=4, decoder_channels=8)
    loc["inputs"]["sagittal_t2"].update(image_px=64, epochs=2)
    params["engine"].update(nproc_per_node=2, threads=2)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for script in ("synthesize.py", "ingest.py", "convert_dicom.py", "split_folds.py"):
        assert run_stage(script, tmp_path).returncode == 0
    db = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train_localizer.py"), "--series", "sagittal_t2"]
        + ["--out", "localizers/sagittal_t2"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "localizers" / "sagittal_t2"
    assert {p.name for p in out.iterdir()} == {
        "localizer.json",
        "weights.safetensors",
        "history.csv",
        "errors.csv",
        "metrics.json",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    folds = pd.read_csv(tmp_path / "data" / "folds.csv")
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors["study_id"]) <= set(folds.loc[folds["fold"] == 0, "study_id"])
    assert metrics["val_samples"] == errors["study_id"].nunique()
    runs = mlflow.MlflowClient(f"sqlite:///{db}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()],
        filter_string="tags.`spinegrade.role` = 'localizer'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["engine.processes"] == "2"


def test_bad_params_exit_with_one_clear_line(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  source: kaggle\n")
    proc = run_stage("ingest.py", tmp_path)
    assert proc.returncode == 1
    assert "data.source: expected one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_help_describes_it():
    proc = run_stage("convert_dicom.py", REPO, "--help")
    assert proc.returncode == 0 and "--workers" not in proc.stdout
    assert "geometry" in proc.stdout and "--params" in proc.stdout


def _imports(path: Path, seen: set[str]) -> None:
    """Add the spinegrade modules ``path`` imports, transitively (with the packages Python
    imports on the way), as repo-relative paths of their files."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("spinegrade")
        ):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("spinegrade")]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # spinegrade, spinegrade.data, ...
                base = "src/" + "/".join(parts[:i])
                for rel in (base + ".py", base + "/__init__.py"):
                    if (REPO / rel).is_file() and rel not in seen:
                        seen.add(rel)
                        _imports(REPO / rel, seen)


def _packages(modules: set[str]) -> set[str]:
    """The directories DVC should depend on: the package directory of every module, and the
    ``__init__.py`` of each package above it (which Python runs, but whose directory holds
    other packages); spinegrade's own ``__init__.py`` (a version string) is left out."""
    out = set()
    for rel in modules:
        parent = Path(rel).parent
        if parent == Path("src/spinegrade") or not (REPO / parent / "__init__.py").is_file():
            continue
        nested = any((d / "__init__.py").is_file() for d in (REPO / parent).iterdir())
        out.add(rel if nested and rel.endswith("__init__.py") else str(parent))
    for d in list(out):
        for anc in Path(d).parents:
            if anc == Path("src/spinegrade") or anc == Path("src"):
                break
            out.add(str(anc / "__init__.py"))
    return {d for d in out if not any(d.startswith(o + "/") for o in out if not o.endswith(".py"))}


def test_dvc_yaml_declares_the_code_and_params_each_stage_reads():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        code: set[str] = set()
        _imports(REPO / script, code)
        declared = {d for d in stage["deps"] if d.startswith(("src/", "stages/"))}
        # Every module the stage imports lies in a declared package directory ...
        for module in code - {"src/spinegrade/__init__.py"}:
            assert any(module == d or module.startswith(d + "/") for d in declared), (
                name,
                module,
            )
        # ... and nothing else is declared: each stage re-runs for what it uses only.
        assert declared == _packages(code) | {script}, name
        text = (REPO / script).read_text()
        used = set(re.findall(r"load_params\(args\.params\)\.(\w+)", text))
        used |= set(re.findall(r"\bparams\.(\w+)", text))
        used &= set(Params.model_fields)  # sections, not methods (params.localizer_engine())
        sections = {p.split(".")[0].replace("-", "_") for p in stage["params"]}
        assert sections == used, name


@pytest.mark.slow
def test_dvc_repro_twice_from_empty_cache_gives_identical_hashes(tmp_path):
    work = dvc_workspace(tmp_path, shrink)
    first = run_dvc(work, "repro", *DATA_STAGES)
    assert first.returncode == 0, first.stderr + first.stdout
    lock1 = yaml.safe_load((work / "dvc.lock").read_text())
    shutil.rmtree(work / ".dvc" / "cache")
    for out in ("data", "reports"):
        shutil.rmtree(work / out)
    (work / "dvc.lock").unlink()
    second = run_dvc(work, "repro", *DATA_STAGES)
    assert second.returncode == 0, second.stderr + second.stdout
    # Same hashes for every stage (the file's stage order follows execution order).
    assert yaml.safe_load((work / "dvc.lock").read_text()) == lock1
    status = run_dvc(work, "status", *DATA_STAGES)
    assert "up to date" in status.stdout
    # Changing a later stage's params re-runs only that stage.
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["split-folds"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run_dvc(work, "status", *DATA_STAGES)
    assert "split-folds" in dry.stdout and "convert-dicom" not in dry.stdout


def test_stages_import_the_library_not_the_command_line_or_the_generator():
    for script in sorted((REPO / "stages").glob("*.py")):
        code: set[str] = set()
        _imports(script, code)
        assert not any(m.startswith("src/spinegrade/cli/") for m in code), script.name
        uses_generator = any(m.startswith("src/spinegrade/synthetic/") for m in code)
        # Only synthesize makes the synthetic dataset (data.source: synthetic).
        assert uses_generator == (script.name == "synthesize.py"), script.name
