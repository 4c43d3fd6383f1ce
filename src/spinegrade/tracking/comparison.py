"""The comparison as MLflow runs: one top-level run per (group, model), in its own experiment.

The pipeline's experiment nests every fold run under one parent run, which the MLflow UI
shows collapsed, with no metrics of its own. The comparison experiment
(``{experiment}-comparison``) holds instead one flat run per row of compare-backbones'
table, named ``{group} / {model}``, with the headline numbers as metrics (rsna group term,
macro recall, macro F1, GFLOPs, recall per GFLOP, their intervals and the calibration
error), the verdict and the pipeline run as tags, and the out-of-fold table it was scored
on as an MLflow dataset input (the Dataset column). ``make ui`` opens this experiment, so a
newcomer sees the table and its charts with no clicks.

Runs are created so the UI's default order (newest first) lists the rows in the order
given; compare-backbones gives them in ``evaluation.compare.display_order``. A pipeline run
logs its rows once: running compare-backbones again for the same pipeline (commit, data,
params) updates those rows instead of adding new ones.

:func:`log_compare_backbones` is all that stage logs: its own run under the pipeline's
parent run, these rows, and each group's choice in the Model Registry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from spinegrade.core import vocab
from spinegrade.evaluation.compare import display_order
from spinegrade.tracking.datasets import pandas_dataset
from spinegrade.tracking.registry import register_choice
from spinegrade.tracking.store import PIPELINE_TAG, ROLE_TAG, child_run, setup

if TYPE_CHECKING:
    from spinegrade.core.config.train_per_condition import TrainPerConditionConfig

log = logging.getLogger(__name__)

# the headline numbers, one chart each in the UI's chart view (six fit on one screen)
METRICS = ("rsna_group_term", "macro_recall", "macro_f1", "ece", "gflops", "recall_per_gflop")
# intervals and the rest, as params (text, shown in the table's columns)
INTERVALS = ("rsna_group_term", "macro_recall", "macro_f1", "rsna_score")
ROLE = "comparison"
CHART_VIEW = "?compareRunsMode=CHART"  # the UI's route parameter for the chart view


def comparison_experiment(experiment: str) -> str:
    """The name of the comparison experiment beside pipeline experiment ``experiment``."""
    return f"{experiment}-comparison"


def run_name(group: str, model: str) -> str:
    return f"{group} / {model}"


def log_comparison(
    experiment: str,
    pipeline: str,
    table: pd.DataFrame,
    datasets: dict[tuple[str, str], tuple[pd.DataFrame, str]],
    tags: dict[str, str],
) -> dict[tuple[str, str], str]:
    """Log one run per row of ``table``, which the UI lists in ``table``'s order.

    Args:
        experiment: the pipeline's experiment name (the comparison's is derived from it).
        pipeline: the pipeline run's parent run id (rows of one pipeline run are updated,
            not repeated, when the stage runs again).
        table: compare-backbones' table (model, group, verdict, METRICS, the intervals).
        datasets: (group, model) -> (the out-of-fold table it was scored on, its path).
        tags: provenance tags (git commit, DVC hashes) for every run.

    Returns:
        (group, model) -> the row's run id.
    """
    experiment_id = setup(comparison_experiment(experiment))
    client = MlflowClient()
    found = {
        (r.data.tags.get("group"), r.data.tags.get("model")): r.info.run_id
        for r in client.search_runs(
            [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline}'"
        )
    }
    # newest first in the UI: create the last row first
    now = int(time.time() * 1000)
    ids = {}
    for i, row in reversed(list(enumerate(table.itertuples(index=False)))):
        key = (row.group, row.model)
        run_tags = {
            **tags,
            PIPELINE_TAG: pipeline,
            ROLE_TAG: ROLE,
            "group": row.group,
            "model": row.model,
            "verdict": row.verdict,
        }
        run_id = found.get(key)
        ids[key] = run_id
        if run_id is None:
            run_id = client.create_run(
                experiment_id,
                start_time=now + (len(table) - i),
                tags=run_tags,
                run_name=run_name(*key),
            ).info.run_id
            ids[key] = run_id
            log_params = True
        else:
            for k, v in run_tags.items():
                client.set_tag(run_id, k, v)
            log_params = False
        # the client, not mlflow.start_run: the stage's own run is the active one
        stamp = now + (len(table) - i)
        metrics = [Metric(m, float(getattr(row, m)), stamp, 0) for m in METRICS]
        params = []
        if log_params:
            ci = {
                f"{k}_ci": f"[{getattr(row, f'{k}_low'):.3f}, {getattr(row, f'{k}_high'):.3f}]"
                for k in INTERVALS
            }
            values = {
                "group": row.group,
                "model": row.model,
                "verdict": row.verdict,
                "rsna_score": f"{row.rsna_score:.3f}",
                "params_m": f"{row.params_m:.1f}",
                **ci,
            }
            params = [Param(k, str(v)) for k, v in values.items()]
            frame, source = datasets[key]
            data = pandas_dataset(frame, source, f"{row.group} out of fold", "label")
            context = InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")
            client.log_inputs(run_id, [DatasetInput(data._to_mlflow_entity(), [context])])
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id, end_time=stamp + 1)
    log.debug("comparison: %d runs in MLflow experiment %s", len(table), experiment_id)
    return ids


def comparison_datasets(
    table: pd.DataFrame, models: str | Path, evaluated: str | Path, train: TrainPerConditionConfig
) -> dict[tuple[str, str], tuple[pd.DataFrame, str]]:
    """(group, model) -> (the out-of-fold table its row was scored on, that file's path):
    each backbone's ``{models}/{group}/{backbone}/oof.csv``, and for the groups whose
    ``table`` has an ensemble row, evaluate's ensemble table under ``evaluated``."""
    datasets = {}
    for b in train.backbones:
        for g in train.groups:
            source = f"{models}/{g}/{b}/oof.csv"
            datasets[(g, b)] = (pd.read_csv(source), source)
    for g in table.loc[table["model"] == vocab.ENSEMBLE, "group"]:
        path = Path(evaluated) / vocab.ensemble_oof_csv(g)
        datasets[(g, vocab.ENSEMBLE)] = (pd.read_csv(path), str(path))
    return datasets


def log_compare_backbones(
    experiment: str,
    params_path: str | Path,
    data_paths: list[str],
    table: pd.DataFrame,
    choice: dict[str, str],
    reports: list[Path],
    models: str | Path,
    evaluated: str | Path,
    train: TrainPerConditionConfig,
) -> str:
    """Everything compare-backbones logs to MLflow; returns the pipeline's parent run id
    (the stage's metrics summary records it).

    Run ``compare-backbones`` under the pipeline's parent run holds ``reports`` as
    artifacts and the pipeline's fold runs as table ``fold_runs.json``; the comparison
    experiment gets one run per row of ``table`` (:func:`log_comparison`, rows in
    ``evaluation.compare.display_order``, with the stage run's provenance tags); each
    group's chosen model is registered from its training outputs
    (``registry.register_choice``: an ensemble with all the backbones).

    Args:
        experiment: the pipeline's experiment name.
        params_path: the params file (one of the keys of the pipeline's parent run).
        data_paths: the data the stage's run names by DVC hash (provenance only).
        table: compare-backbones' table (``evaluation.compare.comparison_table``).
        choice: group -> the model to register (``evaluation.compare.chosen_models``).
        reports: files to log as the stage run's artifacts.
        models: the training outputs, ``{group}/{backbone}/`` (out-of-fold tables and
            the files a registered version holds).
        evaluated: evaluate's output (the ensemble's out-of-fold tables).
        train: the train-per-condition params (groups, backbones).

    Returns:
        The id of the MLflow parent run this stage's run is nested under.
    """
    with child_run(experiment, params_path, data_paths, "compare-backbones", "compare") as active:
        experiment_id = active.info.experiment_id
        parent = mlflow.get_run(active.info.run_id).data.tags["mlflow.parentRunId"]
        for path in reports:
            mlflow.log_artifact(str(path))
        run_ids = log_comparison(
            experiment,
            parent,
            display_order(table),
            comparison_datasets(table, models, evaluated, train),
            {k: v for k, v in active.data.tags.items() if k.startswith(("dvc.", "git_"))},
        )
        for group, model in choice.items():
            members = train.backbones if model == vocab.ENSEMBLE else [model]
            register_choice(
                experiment,
                run_ids[(group, model)],
                group,
                model,
                {b: Path(models) / group / b for b in members},
            )
        runs = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' "
            "and tags.`spinegrade.role` = 'train'",
        )
        if len(runs):
            mlflow.log_table(
                runs.drop(columns=["start_time", "end_time"], errors="ignore"), "fold_runs.json"
            )
    return parent
