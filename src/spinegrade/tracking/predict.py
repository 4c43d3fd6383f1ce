"""predict's MLflow run: one run ``predict`` under the pipeline's parent run, tagged with the
model grading each group, holding the report's numbers as metrics, its files as artifacts
and (``predict.register_model``) the whole study grader as a registered MLflow model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from spinegrade.tracking.store import child_run, numeric
from spinegrade.tracking.study_model import log_study_model

if TYPE_CHECKING:
    from spinegrade.core.config.predict import PredictConfig
    from spinegrade.inference.files import BundleFiles


def log_predict(
    experiment: str,
    params_path: str | Path,
    data_paths: list[str],
    cfg: PredictConfig,
    selection: dict[str, str],
    report: dict,
    artifacts: list[Path],
    bundle: BundleFiles | None = None,
) -> str:
    """Log predict's run; return the id of the pipeline's parent run it is nested under.

    Args:
        experiment: the pipeline's experiment name.
        params_path: the params file (one of the keys of the pipeline's parent run).
        data_paths: the inputs the run names by DVC hash (provenance only).
        cfg: the predict params (``explain`` and ``on_error`` are logged as params).
        selection: group -> the model grading it (tags ``backbone.{group}``).
        report: predict's report; its numbers become metrics (``tracking.store.numeric``).
        artifacts: files to log (the report, the submission, the review page...).
        bundle: the files predict graded with; with ``cfg.register_model`` they are logged
            and registered as the study grader (``tracking.study_model``).
    """
    with child_run(
        experiment,
        params_path,
        data_paths,
        "predict",
        "predict",
        tags={f"backbone.{g}": b for g, b in selection.items()},
    ) as active:
        mlflow.log_params(
            {"explain": cfg.explain, "on_error": cfg.on_error, "register_model": cfg.register_model}
        )
        mlflow.log_metrics(numeric(report))
        for path in artifacts:
            mlflow.log_artifact(str(path))
        if bundle is not None and cfg.register_model:
            uri, version = log_study_model(experiment, bundle, params_path)
            mlflow.set_tag("study_model", f"{uri} (version {version})")
        return mlflow.get_run(active.info.run_id).data.tags["mlflow.parentRunId"]
