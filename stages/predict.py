"""DVC stage predict: grade the held-out test studies end to end, and score the result.

Reads the test studies (test_images + test_series_descriptions.csv, found through ingest's
source.json) with no coordinates: localizes each level, crops, grades with the model
compare-backbones chose per group (a backbone or the ensemble), and writes
--out/submission.csv. When the answers are known (the synthetic dataset writes them beside
the images), it scores the submission with the official metric next to two references: the
same graders cropping at the labelled coordinates (what localization costs) and the class
prior (what learning gains), and measures the localizers' point error in mm. Each score gets
a study-level bootstrap interval (predict's own resamples, seed and level: evaluate's are the
out-of-fold intervals, and changing them does not re-run this stage). All of it goes to
--report and to an MLflow run "predict" under the pipeline's parent run. With
predict.review, --out/review.html is the review page of every test study (the MLflow run
holds it too, and the MLflow UI shows it inline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.predict import PredictConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, atomic_path, write_csv, write_json
from spinegrade.core.runtime import set_threads
from spinegrade.core.vocab import TEST_COORDINATES_CSV, TEST_LABELS_CSV
from spinegrade.data.tables import read_labels, read_series_table
from spinegrade.evaluation.predict import held_out_headline, predict_report, review_summary
from spinegrade.inference.files import BundleFiles
from spinegrade.inference.predict import load_bundle, predict_studies, write_review
from spinegrade.scoring.metrics import solution_from_wide
from spinegrade.tracking.predict import log_predict
from spinegrade.tracking.store import log_headline

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (
    PredictConfig,
    EngineConfig,
    TrainPerConditionConfig,
    CropConfig,
    MlflowConfig,
)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--source", default="data/ingest/source.json", help="ingest's source.json")
    workspace = BundleFiles.workspace()
    parser.add_argument("--labels", default=str(workspace.labels), help="ingest's label table")
    parser.add_argument(
        "--models", default=str(workspace.models), help="train-per-condition outputs"
    )
    parser.add_argument(
        "--localizers", default=str(workspace.localizers), help="train-localizer outputs"
    )
    parser.add_argument(
        "--selection",
        default=str(workspace.selection),
        help="compare-backbones' choice: the model per group",
    )
    parser.add_argument("--out", default="data/predict", help="output directory")
    parser.add_argument("--report", default="reports/predict.json", help="report")
    parser.add_argument(
        "--summary",
        default="reports/metrics/held-out.json",
        help="the headline numbers (the DVC metric)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        cfg = params.predict
        set_threads(params.engine.threads)
        root = Path(json.loads(Path(args.source).read_text())["images_root"])
        series = read_series_table(root / "test_series_descriptions.csv")
        files = BundleFiles(args.models, args.localizers, args.selection, args.labels)
        bundle = load_bundle(files, params)
        answers, coordinates = root / TEST_LABELS_CSV, root / TEST_COORDINATES_CSV
        known = answers.is_file() and coordinates.is_file()
        solution = solution_from_wide(read_labels(answers)) if known else None
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
            scored = predict_report(series, result, bundle.prior_solution, cfg, solution)
            write_csv(tmp / "submission.csv", result.submission)
            write_csv(tmp / "points.csv", result.points)
            write_json(tmp / "selection.json", bundle.selection)
            with atomic_path(tmp / "warnings.txt") as path:
                path.write_text("".join(w + "\n" for w in result.warnings))
            if known:
                write_csv(tmp / "submission_at_labelled_points.csv", result.at_labels.submission)
                write_csv(tmp / "localization_errors.csv", scored.errors)
            if cfg.review:
                write_review(
                    tmp / "review.html",
                    result,
                    bundle.selection,
                    solution,
                    review_summary(scored.report),
                )
        write_json(args.report, scored.report)
        numbers = held_out_headline(scored.report)
        write_json(args.summary, numbers)
        logged = ["submission.csv", "points.csv", "warnings.txt"]
        logged += ["review.html"] if cfg.review else []
        parent = log_predict(
            params.mlflow.experiment,
            args.params,
            [args.models, args.localizers],
            cfg,
            bundle.selection,
            scored.report,
            [Path(args.report), *(Path(args.out) / name for name in logged)],
            files,
        )
        log_headline(parent, {"held_out": numbers})
        report = scored.report
        line = f"{report['studies']} studies graded"
        if known:
            score = report["rsna_score"]["localized"]["score"]
            error = report["localization"]["all"]["error_mm_median"]
            line += f", rsna score {score:.3f}, median point error {error:.1f} mm"
        line += f", {len(result.warnings)} warnings"
        review = [f"{Path(args.out) / 'review.html'} (open it)"] if cfg.review else []
        summary(line, args.out, *review)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
