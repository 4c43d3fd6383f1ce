"""MLflow logging of the graders' training: one run per (group, backbone, fold) nested under
the pipeline's parent run (``MlflowFoldHooks``), with the trained model as an artifact
(``log_torch_model``)."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import timm
import torch
from torch import nn

from spinegrade.core.config.base import flatten
from spinegrade.core.runtime import Runtime
from spinegrade.tracking.datasets import pandas_dataset
from spinegrade.tracking.plots import confusion_figure
from spinegrade.tracking.store import TRAINED_IN_TAG, end_orphans
from spinegrade.tracking.system import end_failed, log_runtime, start_system_metrics
from spinegrade.training.graders.fit import FoldHooks

log = logging.getLogger(__name__)


class MlflowFoldHooks(FoldHooks):
    """Logs each fold as run ``{group}-{backbone}-fold{k}`` nested under ``parent_id``.

    Per run: params, per-epoch losses, metrics and throughput, final metrics (GFLOPs,
    parameter count, images per second, peak memory among them), MLflow's system metrics,
    the device as ``engine.*`` tags, the confusion matrix as an image, the model
    (mlflow.pytorch), and tags with the git commit and the DVC hashes of the data it saw.
    A fold that raises ends its run FAILED with the error as tag ``error``.
    """

    def __init__(
        self,
        experiment_id: str,
        parent_id: str,
        group: str,
        backbone: str,
        params: dict,
        tags: dict[str, str],
        log_model: bool,
        example_shape: tuple[int, ...],
        runtime: Runtime | None = None,
        system_metrics_s: float = 5.0,
        inputs: list[tuple[pd.DataFrame, str, str]] | None = None,
    ) -> None:
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.group, self.backbone = group, backbone
        self.params, self.tags, self.log_model = flatten(params), tags, log_model
        self.example_shape = example_shape  # (2, k, S, S): a batch the model is traced on
        self.runtime = runtime
        self.inputs = inputs or []  # (table, source path, name): the Dataset column
        self.run_ids: dict[int, str] = {}  # fold -> its MLflow run
        start_system_metrics(system_metrics_s)

    def start(self, fold: int, trained_with: int | None = None) -> None:
        replay = {}
        if trained_with is not None:  # no training of its own: name the run that trained it
            replay = {TRAINED_IN_TAG: self.run_ids[trained_with]}
        name = f"{self.group}-{self.backbone}-fold{fold}"
        end_orphans(self.experiment_id, name)
        run = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=name,
            parent_run_id=self.parent_id,
            tags={
                **self.tags,
                **replay,
                "group": self.group,
                "backbone": self.backbone,
                "fold": str(fold),
                "spinegrade.role": "train",
            },
            log_system_metrics=True,
        )
        self.run_ids[fold] = run.info.run_id
        mlflow.log_params({**self.params, "fold": fold})
        for frame, source, name in self.inputs:
            mlflow.log_input(pandas_dataset(frame, source, name), context="training")
        if self.runtime is not None:
            log_runtime(self.runtime)

    def epoch(self, fold: int, epoch: int, row: dict) -> None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    def end(self, fold: int, model: nn.Module, metrics: dict, confusion: list) -> None:
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
        fig = confusion_figure(confusion, f"{self.group} {self.backbone} fold {fold}")
        mlflow.log_figure(fig, "confusion_matrix.png")
        plt.close(fig)
        if self.log_model:
            log_torch_model(model, self.example_shape)
        mlflow.end_run()

    def fail(self, fold: int, error: BaseException) -> None:
        end_failed(error)


def log_torch_model(model: nn.Module, example_shape: tuple[int, ...]) -> None:
    """Log ``model`` as artifact "model": torch.export's pt2 format (no pickle), traced on a
    zero batch of ``example_shape``; falls back to pickle if the model cannot be exported."""
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]
    model = model.cpu().eval()
    example = np.zeros(example_shape, dtype=np.float32)
    try:
        mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=requirements,
            # MLflow would load the exported model back and run the example through it:
            # about 2 s a model, and tests/test_tracking loads a logged model instead
            validate_serving_input=False,
        )
    except Exception as exc:  # torch.export does not cover every architecture
        log.warning("pt2 export failed (%s); logging the model with pickle", exc)
        mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", pip_requirements=requirements
        )
