"""The whole study grader as one MLflow model: registered ``{experiment}-study``
(``spinegrade-study``), alias ``champion``.

One logged pyfunc model holds what ``spinegrade predict`` grades with: the three localizers,
the grader chosen per condition group (a backbone or the ensemble: each member's fold
weights and temperatures), the training labels' class prior for rows that cannot be graded,
the params that say how they were trained and cropped, and the code (``code_paths``). So
any MLflow deployment target loads it: ``mlflow models serve -m
models:/spinegrade-study@champion`` answers ``/invocations``, as do MLServer, KServe or a
container built by ``mlflow models build-docker``.

Input, one row per DICOM file: ``dicom`` (the file's bytes; base64 in MLflow's JSON),
``series_id``, and optionally ``series_description`` (one of the three series types; else
the series type is read off the DICOM headers: ``spinegrade.data.routing``) and
``study_id`` (the prefix of the row ids; default ``study``). Output, 25 rows per study:
``study_id``, ``row_id``, the three probabilities, and ``warnings`` (the study's warnings,
one per line). The numbers are ``spinegrade predict``'s for the same files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import spinegrade
from spinegrade.core import vocab
from spinegrade.core.config.base import load_sections
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.inference.files import BundleFiles
from spinegrade.inference.predict import Bundle, load_bundle
from spinegrade.inference.study import (
    GradedStudy,
    StudyFiles,
    grade_laid_out,
    lay_out_files,
    series_table,
)

log = logging.getLogger(__name__)

ARTIFACT = "bundle"
DESCRIPTION = (
    "The whole study grader (localizers, the chosen grader per group, the class prior): "
    "DICOM files in, the 25 submission rows per study out. Logged by the predict stage; "
    "serve with `mlflow models serve` or `spinegrade serve --model` (docs/serve.md)."
)
MODEL_NAME = "study-grader"
ALIAS = "champion"
# the params sections the bundle carries: how its models were trained and cropped, and the
# engine they run on (device and precision ``auto`` resolve on the machine that loads them)
SECTIONS = {
    "train-per-condition": TrainPerConditionConfig,
    "crop-rois": CropConfig,
    "engine": EngineConfig,
}

INPUT_SCHEMA = Schema(
    [
        ColSpec("binary", "dicom"),
        ColSpec("string", "series_id"),
        ColSpec("string", "series_description", required=False),
        ColSpec("string", "study_id", required=False),
    ]
)
OUTPUT_SCHEMA = Schema(
    [
        ColSpec("string", "study_id"),
        ColSpec("string", "row_id"),
        *(ColSpec("double", c) for c in vocab.SEVERITY_COLUMNS),
        ColSpec("string", "warnings"),
    ]
)
# What the model's code imports (its environment, stated rather than inferred: MLflow's
# inference loads the model in a subprocess, a minute on a CPU)
REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "pydicom",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "pillow",
    "matplotlib",
    "albumentations",
    "pydantic",
    "pyyaml",
    "tqdm",
)


def registered_name(experiment: str) -> str:
    return f"{experiment}-study"


def pack_bundle(files: BundleFiles, params_path: str | Path, dest: Path) -> Path:
    """Link (else copy) what the model needs into ``dest``: models/ (the chosen graders' members
    only), localizers/, choice.json, labels.csv (the class prior) and params.yaml (the
    train-per-condition, crop-rois and engine sections)."""
    import json

    params = yaml.safe_load(Path(params_path).read_text())
    train = load_sections(params_path, TrainPerConditionConfig).train_per_condition
    choice = json.loads(Path(files.selection).read_text())
    dest.mkdir(parents=True)
    for group, model in choice.items():
        members = train.backbones if model == vocab.ENSEMBLE else [model]
        for backbone in members:
            part = Path(group) / backbone
            shutil.copytree(Path(files.models) / part, dest / "models" / part, copy_function=_link)
    shutil.copytree(files.localizers, dest / "localizers", copy_function=_link)
    shutil.copy(files.selection, dest / "choice.json")
    shutil.copy(files.labels, dest / "labels.csv")
    kept = {k: params[k] for k in SECTIONS}
    (dest / "params.yaml").write_text(yaml.safe_dump(kept, sort_keys=False))
    return dest


def _link(src: str, dst: str) -> None:
    """A hard link where the file system allows it (the weights are large), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def load_packed(directory: str | Path, engine: EngineConfig | None = None) -> Bundle:
    """The Bundle of a packed directory, run with ``engine`` (default: the packed engine
    section, whose ``auto`` device and precision resolve here)."""
    directory = Path(directory)
    sections = load_sections(directory / "params.yaml", *SECTIONS.values())
    params = SimpleNamespace(
        train_per_condition=sections.train_per_condition,
        crop_rois=sections.crop_rois,
        engine=engine or sections.engine,
    )
    files = BundleFiles(
        directory / "models",
        directory / "localizers",
        directory / "choice.json",
        directory / "labels.csv",
    )
    return load_bundle(files, params)


class StudyModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: DICOM files in, submission rows out (see the module docstring)."""

    def __init__(self, engine: EngineConfig | None = None):
        self.engine = engine
        self.bundle: Bundle | None = None
        self.packed: Path | None = None
        # one grading at a time: the models (and Grad-CAM's hooks on them) are shared
        self._grading = threading.Lock()

    def load_context(self, context) -> None:
        self.packed = Path(context.artifacts[ARTIFACT])
        self.bundle = load_packed(self.packed, self.engine)

    def use_engine(self, engine: EngineConfig) -> None:
        """Run on ``engine`` from now on (the models load again if its device or precision
        differs from the one they were loaded with)."""
        before = self.engine or load_sections(self.packed / "params.yaml", EngineConfig).engine
        self.engine = engine
        if (before.device, before.precision) != (engine.device, engine.precision):
            self.bundle = load_packed(self.packed, engine)

    def grade(
        self, root: Path, studies: list[StudyFiles], types: dict, review: bool = False
    ) -> list[GradedStudy]:
        """Grade studies laid out under ``root`` (``spinegrade serve`` calls this from its
        pool's threads: they unpack and route in parallel, and grade one at a time)."""
        assert self.bundle is not None, "load_context first"
        table = series_table(studies, types)
        with self._grading:
            return grade_laid_out(root, studies, table, self.bundle, review)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from spinegrade.data.routing import route_series

        with tempfile.TemporaryDirectory(prefix="spinegrade-study-") as tmp:
            root = Path(tmp)
            studies, described = lay_out_files(model_input, root)
            types, notes = {}, {}
            for study in studies:
                for number in study.series:
                    given = described[(study.number, number)]
                    folder = root / str(study.number) / str(number)
                    decided = route_series(folder, given) if given else route_series(folder)
                    notes[(study.number, number)] = decided
                    if decided.series_type:
                        types[(study.number, number)] = decided.series_type
            graded = self.grade(root, studies, types)
        frames = []
        for study, result in zip(studies, graded, strict=True):
            unrouted = [
                f"series {study.series[n]}: no series type ({notes[(study.number, n)].reason})"
                for n in study.series
                if (study.number, n) not in types
            ]
            rows = result.rows[list(vocab.SUBMISSION_HEADER)].copy()
            rows.insert(0, "study_id", result.name)
            rows["warnings"] = "\n".join(unrouted + result.warnings)
            frames.append(rows)
        columns = [c.name for c in OUTPUT_SCHEMA.inputs]
        return (
            pd.concat(frames, ignore_index=True)[columns]
            if frames
            else pd.DataFrame(columns=columns)
        )


def model_arguments(packed: Path) -> dict:
    """What ``mlflow.pyfunc.save_model`` and ``log_model`` take for the study grader of the
    packed directory ``packed`` (``pack_bundle``)."""
    return {
        "python_model": str(Path(__file__).with_name("study_model_entry.py")),
        "artifacts": {ARTIFACT: str(packed)},
        "signature": ModelSignature(INPUT_SCHEMA, OUTPUT_SCHEMA),
        "code_paths": [str(Path(spinegrade.__file__).parent)],
        "pip_requirements": [_pinned(p) for p in REQUIREMENTS],
    }


def log_study_model(
    experiment: str, files: BundleFiles, params_path: str | Path
) -> tuple[str, str]:
    """Log the study grader into the active run and register it as
    ``{experiment}-study`` with alias ``champion``; returns (model URI, version)."""
    with tempfile.TemporaryDirectory(prefix="spinegrade-bundle-") as tmp:
        packed = pack_bundle(files, params_path, Path(tmp) / ARTIFACT)
        info = mlflow.pyfunc.log_model(name=MODEL_NAME, **model_arguments(packed))
    name = registered_name(experiment)
    client = mlflow.MlflowClient()
    try:  # the client, not mlflow.register_model, which prints to the console
        client.create_registered_model(name, description=DESCRIPTION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = mlflow.active_run().info.run_id
    version = client.create_model_version(
        name, info.model_uri, run_id=run_id, model_id=info.model_id
    ).version
    client.set_registered_model_alias(name, ALIAS, version)
    log.debug("registered %s version %s as @%s", name, version, ALIAS)
    return f"models:/{name}@{ALIAS}", str(version)


def _pinned(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package
