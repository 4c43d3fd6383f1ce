"""DVC stage train-per-condition: train one backbone on one condition group.

One job of the dvc.yaml matrix (group x backbone). The scored (outer) folds of
train-per-condition.training.folds are paired in the order given: a pair (a, b) is one
training run on the folds other than a and b, for every epoch (no early stopping); a's epoch
and temperature are chosen on b's studies and b's on a's, so each is the other's inner
validation fold. A last fold without a partner gets a run of its own, with the next fold of
folds.csv (cyclically) as its inner fold, held out too, and early stopping on it. Each
scored fold k's predictions are read once, at its chosen epoch (out-of-fold probabilities,
raw and calibrated), and the fold is logged as MLflow run {group}-{backbone}-fold{k} under
the pipeline's parent run (a pair's second fold replays the shared run's epochs). Writes to
--out: oof.csv (the scored folds' crops), inner.csv (each inner fold's crops, which made the
choices), history.csv, metrics.json (per fold: best epoch, temperature, losses, recall...)
and fold{k}.safetensors (best weights; safetensors, unlike torch.save, writes the same bytes
for the same weights).

Device, precision and processes come from the engine params: with engine.nproc_per_node
N > 1 the same command starts N processes under torchrun (DistributedDataParallel, one per
GPU); only rank 0 logs to MLflow and writes outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, atomic_path, write_csv, write_json
from spinegrade.core.runtime import Runtime
from spinegrade.tracking import store as tracking
from spinegrade.tracking.hooks import MlflowFoldHooks
from spinegrade.training.engine.distributed import launch_stage
from spinegrade.training.graders.fit import FoldHooks, train_group_backbone

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (TrainPerConditionConfig, EngineConfig, MlflowConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--group", required=True, help="spinal | foraminal | subarticular")
    parser.add_argument("--backbone", required=True, help="timm model name")
    parser.add_argument("--crops", default="data/crops", help="crop-rois output directory")
    parser.add_argument("--folds", default="data/folds.csv", help="split-folds output")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def train(params, rt: Runtime) -> None:
        cfg = params.train_per_condition
        # memory-mapped: data-loader workers share the file's pages instead of copies
        crops = np.load(Path(args.crops) / f"{args.group}.npy", mmap_mode="r")
        index = pd.read_csv(Path(args.crops) / f"{args.group}.csv")
        folds = pd.read_csv(args.folds)
        hooks = FoldHooks()
        if rt.is_main:  # rank 0 alone logs to MLflow and writes outputs
            experiment, parent, tags = tracking.pipeline_run(
                params.mlflow.experiment, args.params, [args.crops, args.folds]
            )
            recipe = cfg.recipe(args.backbone)
            hooks = MlflowFoldHooks(
                experiment,
                parent,
                args.group,
                args.backbone,
                params={
                    "training": cfg.training.model_dump(),
                    "recipe": recipe.model_dump(),
                    "crops": {"in_chans": crops.shape[1], "size_px": crops.shape[2]},
                    "engine": params.engine.model_dump(),
                },
                tags=tags,
                log_model=cfg.training.log_model,
                example_shape=(2, *crops.shape[1:]),
                runtime=rt,
                system_metrics_s=params.engine.system_metrics_s,
                inputs=[
                    (index, f"{args.crops}/{args.group}.csv", f"{args.group} crops"),
                    (folds, args.folds, "folds"),
                ],
            )
        result = train_group_backbone(
            crops, index, folds, args.group, args.backbone, cfg, hooks, rt
        )
        if not rt.is_main:
            return
        with atomic_dir(args.out) as tmp:
            write_csv(tmp / "oof.csv", result.oof)
            write_csv(tmp / "inner.csv", result.inner)
            write_csv(tmp / "history.csv", result.history)
            write_json(tmp / "metrics.json", result.metrics)
            for fold, state in result.states.items():
                with atomic_path(tmp / f"fold{fold}.safetensors") as path:
                    save_file(state, str(path))
        oof = result.metrics["oof"]
        summary(
            f"{args.group}/{args.backbone}, folds {', '.join(map(str, sorted(result.states)))}: "
            f"out-of-fold macro recall {oof['macro_recall']:.3f}, F1 {oof['macro_f1']:.3f}",
            args.out,
        )

    return run(lambda: launch_stage(args.params, __file__, argv, train, SECTIONS))


if __name__ == "__main__":
    sys.exit(main())
