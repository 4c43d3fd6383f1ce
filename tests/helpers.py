"""What tests share besides fixtures: paths, identifier scans, the tiny synthetic settings,
DVC workspaces and process helpers (``from helpers import ...``; conftest.py holds only
fixtures and hooks)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import torch
import yaml
from safetensors.torch import save_file

# tests import these from here
from spinegrade.cli.process_group import free_port, group_members  # noqa: F401
from spinegrade.core import vocab
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.inference.files import BundleFiles
from spinegrade.inference.localize import Localizer
from spinegrade.models.backbones import create_backbone
from spinegrade.models.heatmap import HeatmapNet
from spinegrade.models.points import point_spec

# The PostgreSQL server the postgres-marked tests create their databases on (trust auth).
PG_ADMIN = os.environ.get("SPINEGRADE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

IDENTIFIER_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "ReferringPhysicianName",
)


def header_identifiers(root: Path) -> set[str]:
    """The patient identifiers written in the dataset's DICOM headers (one file per study)."""
    found: set[str] = set()
    for study in sorted(root.glob("*_images/*")):
        first = next(study.rglob("*.dcm"))
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        found |= {str(ds[t].value) for t in IDENTIFIER_TAGS if t in ds}
    assert found, f"no DICOM headers found under {root}"
    return found


def assert_no_identifiers(paths, identifiers: set[str]) -> None:
    """Fail naming the file and identifier if any identifier occurs in any file's bytes."""
    checked = 0
    for p in paths:
        blob = p.read_bytes()
        checked += 1
        for ident in identifiers:
            assert ident.encode() not in blob, f"{ident!r} leaked into {p}"
    assert checked, "no files to check"


def tiny_synthetic(**overrides) -> SyntheticConfig:
    """Generator settings for tests: 8 train + 2 test studies at small image sizes."""
    base = SyntheticConfig(
        seed=7,
        n_train_studies=8,
        n_test_studies=2,
        workers=1,
        sagittal_sizes=(96, 112),
        axial_sizes=(80, 96),
        sagittal_slices=(13, 15),
        multi_axial_rate=0.4,
        instance_quirk_rate=0.5,
        missing_label_rate=0.05,
    )
    return SyntheticConfig.model_validate({**base.model_dump(), **overrides})  # validated


REPO = Path(__file__).resolve().parents[1]


def run_dvc(
    cwd: Path, *args: str, timeout: int = 1500, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The venv's dvc in ``cwd``, with the venv on PATH and no MLFLOW_TRACKING_URI (plus
    ``env``)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dvc_workspace(dest: Path, shrink: Callable[[dict], None]) -> Path:
    """A DVC project in ``dest``: the repo's dvc.yaml, stages and src, params.yaml as
    changed by ``shrink`` (which edits the parsed params in place), the device pinned to
    the CPU."""
    shutil.copy(REPO / "dvc.yaml", dest)
    shutil.copytree(REPO / "stages", dest / "stages")
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["engine"]["device"] = "cpu"  # byte-identical outputs are promised on CPU only
    # tiny crops reach 1x1 feature maps, where oneDNN's bf16 backward returned NaN gradients
    params["engine"]["precision"] = "fp32"
    shrink(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_dvc(dest, "init", "--no-scm", "-q").returncode == 0
    return dest


def wait_for_output(proc: subprocess.Popen, log: Path, pattern: re.Pattern, timeout: float):
    """The first match of ``pattern`` in ``log`` (a process's output file), polled until
    ``timeout`` s; AssertionError with the output if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if m := pattern.search(text):
            return m
        assert proc.poll() is None, f"spinegrade.cli.ui exited with {proc.returncode}:\n{text}"
        time.sleep(0.3)
    raise AssertionError(f"no {pattern.pattern!r} within {timeout} s:\n{log.read_text()}")


def shrink_pipeline(params: dict) -> None:
    """The whole pipeline shrunk for tests: tiny data, one epoch, small localizers (edits
    parsed params in place; the backbones are the configured ones)."""
    params["synthesize"].update(
        n_train_studies=9, n_test_studies=2, workers=1, sagittal_sizes=[112], axial_sizes=[96]
    )
    params["convert-dicom"]["workers"] = 1
    params["split-folds"]["n_folds"] = 3
    params["train-per-condition"]["training"].update(epochs=1, batch_size=16)
    loc = params["train-localizer"]
    loc.update(batch_size=8, decoder_channels=8)
    for inp in loc["inputs"].values():
        inp.update(image_px=64, epochs=1)


def repro_console(work: Path) -> dict[str, str]:
    """What `dvc repro` printed while building the tiny pipeline in ``work``: DVC's own
    lines go to stdout, the stages' logging and progress bars to stderr."""
    return {
        stream: (work.parent / f"{work.name}-repro.{stream}").read_text()
        for stream in ("stdout", "stderr")
    }


def project_warnings_as_errors() -> str:
    """A PYTHONWARNINGS value that makes a warning raised from any of the project's modules
    or a stage script (``__main__``) an error. (Python matches a module name exactly here,
    so each module is named.)"""
    modules = ["__main__"] + [
        ".".join(p.relative_to(REPO / "src").with_suffix("").parts).removesuffix(".__init__")
        for p in sorted((REPO / "src" / "spinegrade").rglob("*.py"))
    ]
    return ",".join(f"error:::{m}" for m in modules)


def build_tiny_pipeline(dest: Path) -> Path:
    """A DVC workspace in ``dest`` on which `dvc repro` has run every stage (its MLflow
    store under mlruns/), with the project's own warnings turned into errors. What it
    printed: :func:`repro_console`."""
    work = dvc_workspace(dest, shrink_pipeline)
    proc = run_dvc(work, "repro", env={"PYTHONWARNINGS": project_warnings_as_errors()})
    for stream in ("stdout", "stderr"):
        (dest.parent / f"{dest.name}-repro.{stream}").write_text(getattr(proc, stream))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


# What a copy of a finished workspace hard-links instead of copying: the DVC cache (content-
# addressed, never written in place) and the model folders (DVC removes a stage's outputs
# before it runs, so a stage writes new files and never into the session pipeline's): about
# 3 GB of weights, a minute of copying per copy on a slow disk.
LINKED = (".dvc/cache", "models", "localizers")


def copy_workspace(src: Path, dest: Path) -> Path:
    """A copy of a finished workspace (outputs, DVC cache; not its MLflow store, whose
    artifact locations point into ``src``: a run in the copy starts a store of its own) that
    a test may change; the session's pipeline itself stays as it was built (LINKED)."""
    linked = tuple(str(src / d) + os.sep for d in LINKED)

    def copy(a: str, b: str) -> None:
        if a.startswith(linked):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (Path(folder) == src and n == "mlruns")]

    shutil.copytree(src, dest, symlinks=True, ignore=ignore, copy_function=copy)
    return dest


# DVC experiments commit (to refs of their own): an identity for machines without one.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "spinegrade tests",
    "GIT_AUTHOR_EMAIL": "tests@spinegrade.invalid",
    "GIT_COMMITTER_NAME": "spinegrade tests",
    "GIT_COMMITTER_EMAIL": "tests@spinegrade.invalid",
}


def git_workspace(work: Path) -> Path:
    """A copied workspace (made with ``dvc init --no-scm``) turned into a git repository as a
    clone of the project is: the code, params, dvc.lock and the uncached reports committed,
    the cached outputs and the MLflow store git-ignored (DVC experiments need git)."""
    assert run_dvc(work, "config", "core.no_scm", "false").returncode == 0
    # an experiment checks every output out into its own folder: hard links, not copies of
    # the tiny pipeline's gigabytes of model weights (the stages replace outputs, never edit)
    assert run_dvc(work, "config", "cache.type", "hardlink,copy").returncode == 0
    (work / ".gitignore").write_text("/data\n/models\n/localizers\n/mlruns\n__pycache__/\n")
    # what `dvc init` writes in a git repository (a --no-scm one has none): without it the
    # baseline commit held the whole DVC cache, which every experiment then copied through git
    (work / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    env = os.environ | GIT_IDENTITY
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "baseline"]):
        subprocess.run(["git", *cmd], cwd=work, env=env, check=True, capture_output=True)
    return work


def postgres_problem() -> str | None:
    """Why PostgreSQL at PG_ADMIN cannot be used (one line saying how to start it), or None."""
    import psycopg

    try:
        psycopg.connect(PG_ADMIN, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        where = re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", PG_ADMIN)
        reason = " ".join(str(exc).split())
        return (
            f"PostgreSQL is not reachable at {where} ({reason}): start it (e.g. "
            "`pg_ctlcluster 15 main start` or `service postgresql start`) with trust auth for "
            "user postgres on 127.0.0.1:5432, or set SPINEGRADE_TEST_PG to an admin URI"
        )
    return None


# --- small untrained models, laid out as predict and the study grader read them -------------
CROP = CropConfig(slices=3, size_px=32)

BACKBONE = "resnet18"
INPUTS = {
    "sagittal_t2": LocalizerInput(slices=3, step_mm=4.0, image_px=64, epochs=1),
    "sagittal_t1": LocalizerInput(slices=5, step_mm=9.0, image_px=64, epochs=1),
    "axial_t2": LocalizerInput(slices=3, step_mm=4.0, image_px=64, epochs=1),
}


def untrained_localizers() -> dict[str, Localizer]:
    """The three localizers, small and untrained (seeded)."""
    torch.manual_seed(0)
    out = {}
    for slug, inp in INPUTS.items():
        spec = point_spec(slug)
        model = HeatmapNet("mobilenetv2_100", inp.slices, len(spec.keys), 8).eval()
        out[slug] = Localizer(model, spec, inp)
    return out


def write_bundle(root: Path, tiny_ingest, files: BundleFiles | None = None) -> dict[str, Path]:
    """Model files as a finished `dvc repro` leaves them (untrained weights), laid out as
    ``files`` says (default: as the study grader packs them, tracking.study_model:
    models/, localizers/, choice.json, labels.csv under ``root``), and params.yaml in
    ``root``. ``BundleFiles.workspace(root)`` lays them out as `make repro` does."""
    files = files or BundleFiles(
        root / "models", root / "localizers", root / "choice.json", root / "labels.csv"
    )
    torch.manual_seed(0)
    choice = {}
    for g in vocab.GROUPS:
        d = Path(files.models) / g / BACKBONE
        d.mkdir(parents=True)
        save_file(
            create_backbone(BACKBONE, CROP.slices, CROP.size_px).state_dict(),
            str(d / "fold0.safetensors"),
        )
        (d / "metrics.json").write_text(json.dumps({"folds": {"fold0": {"temperature": 1.5}}}))
        choice[g] = BACKBONE
    for slug, loc in untrained_localizers().items():
        d = Path(files.localizers) / slug
        d.mkdir(parents=True)
        meta = {
            "series": slug,
            "encoder": "mobilenetv2_100",
            "in_chans": loc.inp.slices,
            "n_points": len(loc.spec.keys),
            "decoder_channels": 8,
            "input": {
                "slices": loc.inp.slices,
                "step_mm": loc.inp.step_mm,
                "image_px": loc.inp.image_px,
                "epochs": 1,
            },
        }
        (d / "localizer.json").write_text(json.dumps(meta))
        state = {k: v.contiguous() for k, v in loc.model.state_dict().items()}
        save_file(state, str(d / "weights.safetensors"))
    for path in (files.selection, files.labels):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(files.selection).write_text(json.dumps(choice))
    tiny_ingest.labels.to_csv(files.labels, index=False)
    params = {
        "crop-rois": {"slices": CROP.slices, "size_px": CROP.size_px},
        "train-per-condition": {
            "backbones": [BACKBONE],
            "recipes": {BACKBONE: {}},
        },
        "engine": {"device": "cpu", "precision": "fp32", "threads": 1},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"root": root}


def predict_args(tiny_dataset: Path, tmp_path: Path, **options: str) -> list[str]:
    """``spinegrade predict`` arguments pointing at write_bundle's files; ``options``
    (name -> value, underscores for dashes) override or add."""
    args = {
        "images": str(tiny_dataset / "test_images"),
        "series": str(tiny_dataset / "test_series_descriptions.csv"),
        "out": str(tmp_path / "s.csv"),
        "models": str(tmp_path / "models"),
        "localizers": str(tmp_path / "localizers"),
        "selection": str(tmp_path / "choice.json"),
        "labels": str(tmp_path / "labels.csv"),
        "params": str(tmp_path / "params.yaml"),
        **options,
    }
    return ["predict", *(x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v))]
