"""predict's report: the held-out studies' submission scored when their answers are known.

The official score of the submission (graded at the points the localizers found) sits next
to two references on the same studies: the same graders at the labelled points (what
localization costs) and the class prior (what learning gains), each with its study-level
bootstrap interval; the localizers' point error is in mm. The review page's header shows
the headline lines of it (:func:`review_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from spinegrade.core.config.intervals import IntervalSettings
from spinegrade.evaluation.localization import summarize_localization
from spinegrade.inference.localize import localization_errors
from spinegrade.inference.predict import PredictResult
from spinegrade.scoring.bootstrap import score_intervals
from spinegrade.scoring.metrics import class_prior_submission, rsna_score


@dataclass
class PredictReport:
    """predict's report and, when the answers were known, the error of each
    localized point that has a labelled one (``localization_errors``)."""

    report: dict
    errors: pd.DataFrame | None = None


def predict_report(
    series: pd.DataFrame,
    result: PredictResult,
    prior_solution: pd.DataFrame,
    settings: IntervalSettings,
    solution: pd.DataFrame | None = None,
) -> PredictReport:
    """Counts (studies, rows, points found, warnings) and, with ``solution``, the scores.

    Args:
        series: the study_id, series_id, series_description rows that were predicted.
        result: ``predict_studies``' result; with ``solution`` it must hold ``at_labels``
            (predicted with the labelled coordinates).
        prior_solution: the training labels' solution rows (the class prior).
        settings: the bootstrap resamples, seed and level (the predict params).
        solution: the answers (scoring.metrics solution rows), when known; then the report
            also holds ``rsna_score`` and ``rsna_score_ci`` of ``localized``,
            ``labelled_points`` and ``class_prior``, and ``localization`` (point error).
    """
    report: dict = {
        "studies": series["study_id"].nunique(),
        "rows": len(result.submission),
        "points_found": len(result.points),
        "warnings": len(result.warnings),
    }
    if solution is None:
        return PredictReport(report)
    if result.at_labels is None:
        raise ValueError("scoring a prediction needs its result at the labelled coordinates")
    prior = class_prior_submission(prior_solution, sorted(solution["study_id"].unique()))
    errors = localization_errors(result.points, result.at_labels.points)
    submissions = {
        "localized": result.submission,
        "labelled_points": result.at_labels.submission,
        "class_prior": prior,
    }
    report["rsna_score"] = {k: rsna_score(solution, v) for k, v in submissions.items()}
    report["rsna_score_ci"] = {
        k: score_intervals(solution, v, settings) for k, v in submissions.items()
    }
    report["localization"] = summarize_localization(errors)
    return PredictReport(report, errors)


def held_out_headline(report: dict) -> dict[str, float]:
    """predict's metrics summary, what DVC compares across experiments
    (reports/metrics/held-out.json; the report itself is an output, not a metric): the rsna
    score of the submission graded at the points the localizers found (end to end) and
    the localizers' median point error in mm. Empty when the answers are unknown."""
    if "rsna_score" not in report:
        return {}
    return {
        "rsna_score": float(report["rsna_score"]["localized"]["score"]),
        "point_error_mm_median": float(report["localization"]["all"]["error_mm_median"]),
    }


def review_summary(report: dict) -> dict[str, str]:
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
