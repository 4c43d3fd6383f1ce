"""DVC stage evaluate: out-of-fold predictions -> metrics, the official score, intervals.

Reads only the training stage's oof.csv files (plus labels and folds). Writes --report:
under ``models``, per model (each backbone, and their ensemble) its rsna score and four
terms, raw and calibrated, with intervals, and per group accuracy, macro and per-class
recall/precision/F1, confusion matrix, expected calibration error before and after
temperature scaling and bootstrap intervals; under ``paired``, per group, each pair of
models' paired differences; and the class-prior baseline. Also writes, for DVC plots,
confusion tables and reliability diagrams (per group a PNG of every model before and after
temperature scaling, and per (group, model) a CSV of its calibrated points: bin,
confidence, accuracy, count), and each model's 25-row-per-study OOF submission under
--out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.config.base import load_sections
from spinegrade.core.config.evaluate import EvaluateConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, write_csv, write_json
from spinegrade.evaluation.evaluate import evaluate
from spinegrade.evaluation.plots import reliability_figure
from spinegrade.tracking import store as tracking

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (TrainPerConditionConfig, EvaluateConfig, MlflowConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--models", default="models", help="training outputs: {group}/{backbone}/")
    parser.add_argument("--labels", default="data/ingest/labels.csv", help="ingest's label table")
    parser.add_argument("--folds", default="data/folds.csv", help="split-folds output")
    parser.add_argument("--crops", default="data/crops", help="crops (for run provenance only)")
    parser.add_argument("--out", default="data/evaluate", help="submissions directory")
    parser.add_argument("--plots", default="reports/confusion", help="confusion tables (DVC plots)")
    parser.add_argument(
        "--calibration",
        default="reports/calibration",
        help="reliability diagrams, as PNGs and as data (DVC plots)",
    )
    parser.add_argument("--report", default="reports/evaluate.json", help="report")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        cfg = params.train_per_condition
        oof = {
            (g, b): pd.read_csv(Path(args.models) / g / b / "oof.csv")
            for g in cfg.groups
            for b in cfg.backbones
        }
        result = evaluate(
            pd.read_csv(args.labels),
            pd.read_csv(args.folds),
            oof,
            list(cfg.groups),
            list(cfg.backbones),
            params.evaluate,
        )
        with atomic_dir(args.out) as tmp:
            for model, sub in result.submissions.items():
                write_csv(tmp / f"oof_submission_{model}.csv", sub)
            for group, table in result.ensembles.items():
                write_csv(tmp / vocab.ensemble_oof_csv(group), table)
        with atomic_dir(args.plots) as tmp:
            for (group, model), table in result.confusions.items():
                write_csv(tmp / f"{group}-{model}.csv", table)
        models = list(result.report["models"])
        with atomic_dir(args.calibration) as tmp:
            for group in cfg.groups:
                fig = reliability_figure(
                    group,
                    {m: result.reliability[(group, m)] for m in models},
                    {
                        m: (
                            result.report["models"][m]["groups"][group]["ece_raw"],
                            result.report["models"][m]["groups"][group]["ece"],
                        )
                        for m in models
                    },
                )
                fig.savefig(tmp / f"{group}.png", format="png", dpi=110)
                plt.close(fig)
                for m in models:  # the calibrated points as data, for `dvc plots diff`
                    points = pd.DataFrame(result.reliability[(group, m)]["calibrated"])
                    write_csv(tmp / f"{group}-{m}.csv", points)
        write_json(args.report, result.report)

        with tracking.child_run(
            params.mlflow.experiment, args.params, [args.crops, args.folds], "evaluate", "evaluate"
        ):
            mlflow.log_metrics(tracking.numeric(result.report))
            mlflow.log_artifact(args.report)
            mlflow.log_artifacts(args.calibration, "calibration")
        scores = ", ".join(f"{m} {result.report['models'][m]['rsna']['score']:.3f}" for m in models)
        prior = result.report["class_prior_baseline"]["score"]
        summary(
            f"out-of-fold rsna score (lower is better): {scores}; class prior {prior:.3f}",
            args.report,
        )

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
