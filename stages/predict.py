"""DVC stage predict: grade the held-out test studies end to end, and score the result.

Reads the test studies (test_images + test_series_descriptions.csv, found through
ingest's source.json) with no coordinates: localizes each level, crops, grades with the
backbones compare-backbones chose, and writes --out/submission.csv. When the answers are
known (the synthetic dataset writes them beside the images), it scores the submission with
the official metric next to two references: the same graders cropping at the labelled
coordinates (what localization costs) and the class prior (what learning gains), and
measures the localizers' point error in mm. Each score gets a study-level bootstrap
interval (the evaluate params' resamples, seed and level). All of it goes to --report (a
DVC metric) and to an MLflow run "predict" under the pipeline's parent run. With
predict.review, --out/review.html is the review page of every test study (the MLflow run
holds it too, and the MLflow UI shows it inline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.evaluate import EvaluateConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.predict import PredictConfig
from spinegrade.core.config.train_per_condition import TrainConfig
from spinegrade.core.entry import run, setup_logging, stage_parser
from spinegrade.core.io import atomic_dir, atomic_path, write_csv, write_json
from spinegrade.core.runtime import set_threads
from spinegrade.core.vocab import TEST_COORDINATES_CSV, TEST_LABELS_CSV
from spinegrade.data.tables import read_labels, read_series_table
from spinegrade.evaluation.localization import summarize_localization
from spinegrade.inference.localize import localization_errors
from spinegrade.inference.predict import load_bundle, predict_studies, write_review
from spinegrade.scoring.bootstrap import score_intervals
from spinegrade.scoring.metrics import class_prior_submission, rsna_score, solution_from_wide
from spinegrade.tracking import store as tracking


def _summary(report: dict) -> dict[str, str]:
    """The review page's header lines: the scores with their intervals, the point error."""
    out = {}
    for name, ci in report.get("rsna_score_ci", {}).items():
        s = ci["score"]
        out[f"rsna score, {name.replace('_', ' ')}"] = (
            f"{s['estimate']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"
        )
    if "localization" in report:
        out["point error, median"] = f"{report['localization']['all']['error_mm_median']:.1f} mm"
    return out


# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (PredictConfig, EngineConfig, TrainConfig, CropConfig, EvaluateConfig, MlflowConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--source", default="data/ingest/source.json", help="ingest's source.json")
    parser.add_argument("--labels", default="data/ingest/labels.csv", help="ingest's label table")
    parser.add_argument("--models", default="models", help="train-per-condition outputs")
    parser.add_argument("--localizers", default="localizers", help="train-localizer outputs")
    parser.add_argument(
        "--selection", default="reports/compare-backbones.json", help="compare-backbones report"
    )
    parser.add_argument("--out", default="data/predict", help="output directory")
    parser.add_argument("--report", default="reports/predict.json", help="report (DVC metric)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        cfg = params.predict
        set_threads(params.engine.threads)
        root = Path(json.loads(Path(args.source).read_text())["images_root"])
        series = read_series_table(root / "test_series_descriptions.csv")
        bundle = load_bundle(
            args.models,
            args.localizers,
            args.selection,
            args.labels,
            params.train_per_condition,
            params.crop_rois,
            params.engine,
        )
        answers = root / TEST_LABELS_CSV
        coordinates = root / TEST_COORDINATES_CSV
        known = answers.is_file() and coordinates.is_file()
        with atomic_dir(args.out) as tmp:
            result = predict_studies(
                root / "test_images",
                series,
                bundle,
                coordinates=pd.read_csv(coordinates) if known else None,
                on_error=cfg.on_error,
                explain_dir=tmp / "explain" if cfg.explain else None,
                review=cfg.review,
            )
            write_csv(tmp / "submission.csv", result.submission)
            write_csv(tmp / "points.csv", result.points)
            write_json(tmp / "selection.json", bundle.selection)
            with atomic_path(tmp / "warnings.txt") as path:
                path.write_text("".join(w + "\n" for w in result.warnings))
            report: dict = {
                "studies": series["study_id"].nunique(),
                "rows": len(result.submission),
                "points_found": len(result.points),
                "warnings": len(result.warnings),
            }
            if known:
                at_labels = result.at_labels
                write_csv(tmp / "submission_at_labelled_points.csv", at_labels.submission)
                solution = solution_from_wide(read_labels(answers))
                prior = class_prior_submission(
                    bundle.prior_solution, sorted(solution["study_id"].unique())
                )
                errors = localization_errors(result.points, at_labels.points)
                write_csv(tmp / "localization_errors.csv", errors)
                submissions = {
                    "localized": result.submission,
                    "labelled_points": at_labels.submission,
                    "class_prior": prior,
                }
                report["rsna_score"] = {k: rsna_score(solution, v) for k, v in submissions.items()}
                report["rsna_score_ci"] = {
                    k: score_intervals(solution, v, params.evaluate) for k, v in submissions.items()
                }
                report["localization"] = summarize_localization(errors)
            if cfg.review:
                write_review(
                    tmp / "review.html",
                    result,
                    bundle.selection,
                    solution if known else None,
                    _summary(report),
                )
        write_json(args.report, report)

        with tracking.child_run(
            params.mlflow.experiment,
            args.params,
            [args.models, args.localizers],
            "predict",
            "predict",
            tags={f"backbone.{g}": b for g, b in bundle.selection.items()},
        ):
            mlflow.log_params({"explain": cfg.explain, "on_error": cfg.on_error})
            mlflow.log_metrics(tracking.numeric(report))
            mlflow.log_artifact(args.report)
            for name in ("submission.csv", "points.csv", "warnings.txt"):
                mlflow.log_artifact(str(Path(args.out) / name))
            if cfg.review:
                mlflow.log_artifact(str(Path(args.out) / "review.html"))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
