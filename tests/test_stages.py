"""The four data stages end to end: through their CLIs and through `dvc repro`.

A shrunken copy of params.yaml (tiny synthetic data, one worker) drives the real stage
scripts and the real dvc.yaml.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from helpers import assert_no_identifiers, dvc_workspace, header_identifiers, run_dvc

from spinegrade.core.config.base import SECTIONS

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


def _load_script(name: str):
    """A script of scripts/ as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage_deps = _load_script("stage_deps")


def _declared_code(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.startswith(("src/", "stages/"))]


def test_each_stage_depends_on_exactly_the_code_it_imports():
    """A stage's code deps are its script and its import closure, module by module (package
    __init__ files and read assets included): no wider (a spurious re-run), no narrower
    (an edit that would not re-run it)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, script in stage_deps.stage_scripts(REPO / "dvc.yaml").items():
        declared = _declared_code(stages[name])
        wanted = stage_deps.code_deps(script)
        assert sorted(declared) == sorted(wanted), (
            f"{name}: declared but not imported {sorted(set(declared) - set(wanted))}; "
            f"imported but not declared {sorted(set(wanted) - set(declared))} "
            "(python scripts/stage_deps.py --write)"
        )
        assert all((REPO / d).exists() for d in declared), name
    assert stage_deps.main(["--check"]) == 0


def test_the_wiring_check_catches_a_missing_and_a_spurious_dependency(tmp_path):
    """Planted in a copy: a new import in a stage script, and a module the stage never
    imports listed among its deps; both are reported, and --write mends both."""
    for rel in ("stages", "src", "dvc.yaml"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / rel)
    script = tmp_path / "stages" / "split_folds.py"
    script.write_text(
        script.read_text().replace(
            "from __future__ import annotations\n",
            "from __future__ import annotations\n\nimport spinegrade.scoring.metrics\n",
        )
    )
    dvc_yaml = tmp_path / "dvc.yaml"
    text = dvc_yaml.read_text()
    spurious = "      - src/spinegrade/tracking/comparison.py\n"
    dvc_yaml.write_text(
        text.replace("      - stages/ingest.py\n", "      - stages/ingest.py\n" + spurious)
    )
    wanted = stage_deps.expected(dvc_yaml, tmp_path)
    stages = yaml.safe_load(wanted)["stages"]
    assert "src/spinegrade/scoring/metrics.py" in stages["split-folds"]["deps"]
    assert "src/spinegrade/tracking/comparison.py" not in stages["ingest"]["deps"]
    assert wanted != dvc_yaml.read_text()
    # everything but the code deps is kept as written (comments, data deps, params)
    old = yaml.safe_load(text)["stages"]
    for name, stage in stages.items():
        data = [d for d in stage["deps"] if not d.startswith(("src/", "stages/"))]
        assert data == [d for d in old[name]["deps"] if not d.startswith(("src/", "stages/"))]
        assert stage["params"] == old[name]["params"]
    assert [c for c in wanted.splitlines() if c.lstrip().startswith("#")] == [
        c for c in text.splitlines() if c.lstrip().startswith("#")
    ]


def test_every_file_a_module_reads_is_claimed_by_it():
    """Non-Python files under src/ are stage deps only through stage_deps.ASSETS: a new
    asset must say which module reads it."""
    claimed = {a for assets in stage_deps.ASSETS.values() for a in assets}
    for p in (REPO / "src" / "spinegrade").rglob("*"):
        rel = str(p.relative_to(REPO))
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in rel:
            assert any(rel == c or rel.startswith(c + "/") for c in claimed), rel
    for module in stage_deps.ASSETS:
        assert (REPO / module).is_file(), module


def _stage_sections(script: Path) -> set[str]:
    """The YAML keys of the sections a stage script loads (its SECTIONS tuple)."""
    tree = ast.parse(script.read_text())
    names = next(
        [e.id for e in node.value.elts]
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SECTIONS"
    )
    module = _load_module_of(script)
    return {getattr(module, n).key for n in names}


def _load_module_of(script: Path):
    spec = importlib.util.spec_from_file_location(f"stage_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_stage_declares_the_params_sections_it_loads():
    """dvc.yaml's params of a stage are the sections its script loads (load_sections), and
    its closure holds the schemas of those sections and no others."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, script in stage_deps.stage_scripts(REPO / "dvc.yaml").items():
        loaded = _stage_sections(REPO / script)
        declared = {p.split(".")[0] for p in stages[name]["params"]}
        assert declared == loaded, name
        schemas = {
            Path(m).stem.replace("_", "-")
            for m in stage_deps.closure(script)
            if m.startswith("src/spinegrade/core/config/")
        } & set(SECTIONS)
        assert schemas <= loaded, (name, schemas - loaded)


@pytest.mark.slow
@pytest.mark.dvc
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
        code = stage_deps.closure(script)
        assert not any(m.startswith("src/spinegrade/cli/") for m in code), script.name
        uses_generator = any(m.startswith("src/spinegrade/synthetic/") for m in code)
        # Only synthesize makes the synthetic dataset (data.source: synthetic).
        assert uses_generator == (script.name == "synthesize.py"), script.name
