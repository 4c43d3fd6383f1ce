"""DVC stage train-localizer: a heatmap model that finds one series type's level points.

One job of the dvc.yaml matrix (series type: sagittal_t2, sagittal_t1, axial_t2). Builds
samples from the labelled coordinates on the converted volumes, trains on every fold but
the validation fold, keeps the epoch with the lowest validation loss, and measures its
point error in mm (median, 90th percentile) and heatmap Dice on the validation studies.
Logs the run as MLflow run localizer-{series} under the pipeline's parent run.
Writes to --out: localizer.json (how to rebuild the model), weights.safetensors,
history.csv, errors.csv (per validation point) and metrics.json.

Device, precision and processes come from the engine params (as train-per-condition),
the precision from train-localizer.precision where that is set.
"""

from __future__ import annotations

import sys

import mlflow
import pandas as pd
from safetensors.torch import save_file

from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.train_localizer import LocalizerConfig, localizer_engine
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, atomic_path, write_csv, write_json
from spinegrade.core.runtime import Runtime
from spinegrade.models.points import build_samples, point_spec
from spinegrade.tracking import store as tracking
from spinegrade.tracking.system import log_runtime, start_system_metrics
from spinegrade.training.engine.distributed import launch_stage
from spinegrade.training.localizers.fit import train_localizer

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (LocalizerConfig, EngineConfig, MlflowConfig)


def engine(params) -> EngineConfig:
    """The engine params with train-localizer's own precision, where it sets one."""
    return localizer_engine(params.train_localizer, params.engine)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--series", required=True, help="sagittal_t2 | sagittal_t1 | axial_t2")
    parser.add_argument("--labels", default="data/ingest/labels.csv", help="ingest's label table")
    parser.add_argument("--volumes", default="data/volumes", help="convert-dicom output")
    parser.add_argument("--folds", default="data/folds.csv", help="split-folds output")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def train(params, rt: Runtime) -> None:
        cfg = params.train_localizer
        spec = point_spec(args.series)
        inp = cfg.input_for(args.series)
        samples = build_samples(
            pd.read_csv(args.labels),
            pd.read_csv(f"{args.volumes}/slices.csv"),
            args.volumes,
            spec,
            inp,
        )
        folds = pd.read_csv(args.folds)
        if not rt.is_main:  # rank 0 alone logs to MLflow and writes outputs
            train_localizer(samples, folds, spec, cfg, rt=rt)
            return
        start_system_metrics(params.engine.system_metrics_s)
        run = tracking.child_run(
            params.mlflow.experiment,
            args.params,
            [args.volumes, args.folds],
            f"localizer-{args.series}",
            "localizer",
            tags={"series": args.series},
            log_system_metrics=True,
        )
        with run:  # an exception ends the run FAILED
            mlflow.log_params(
                tracking.flatten(
                    cfg.model_dump(exclude={"inputs"})
                    | {"input": inp.model_dump(), "engine": engine(params).model_dump()}
                )
            )
            log_runtime(rt)

            def log_epoch(epoch: int, row: dict) -> None:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch)

            result = train_localizer(samples, folds, spec, cfg, log_epoch, rt)
            cost = {"seconds": result.seconds, **result.speed}
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in (result.metrics | cost).items()})
            with atomic_dir(args.out) as tmp:
                write_json(tmp / "localizer.json", result.meta)
                with atomic_path(tmp / "weights.safetensors") as path:
                    save_file(result.state, str(path))
                write_csv(tmp / "history.csv", result.history)
                write_csv(tmp / "errors.csv", result.errors)
                write_json(tmp / "metrics.json", result.metrics)
            mlflow.log_artifacts(args.out, "localizer")
        m = result.metrics
        summary(
            f"{args.series}: median point error {m['point_error_mm_median']:.1f} mm (p90 "
            f"{m['point_error_mm_p90']:.1f}), right slice {m['slice_exact']:.0%}, "
            f"{m['epochs_run']} epoch(s)",
            args.out,
        )

    return run(lambda: launch_stage(args.params, __file__, argv, train, SECTIONS, engine))


if __name__ == "__main__":
    sys.exit(main())
