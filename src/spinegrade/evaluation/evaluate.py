"""evaluate: out-of-fold predictions -> metrics, the official score, intervals, calibration.

Only the training stage's out-of-fold tables and the labels are read. The studies scored
are those of the trained (outer) folds; none of them chose an epoch or a temperature (the
inner folds did). Per model (each backbone, and ``ensemble``: the mean of the backbones'
calibrated probabilities per group), the three groups' OOF rows are assembled into a full
25-row-per-study submission; a labelled level without a crop (no coordinates) gets its
column's class prior from the training studies of its fold (:func:`fill_submission`, the
same function predict uses). The class-prior baseline is that same prior, so it too never
sees the studies it is scored on.

Every headline number gets a study-level bootstrap interval (scoring.bootstrap), and each
pair of models per group a paired difference, so the comparison says which differences the
studies can resolve. Calibration is reported before and after temperature scaling: the rsna
terms, the expected calibration error and the points of a reliability diagram.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.config.evaluate import EvaluateConfig
from spinegrade.core.errors import DataError
from spinegrade.scoring import bootstrap as bs
from spinegrade.scoring.calibration import expected_calibration_error, reliability_table
from spinegrade.scoring.metrics import (
    classification_metrics,
    fill_submission,
    rsna_score,
    solution_from_labels,
)

log = logging.getLogger(__name__)

RAW_COLUMNS = list(vocab.RAW_SEVERITY_COLUMNS)
KEYS = ["study_id", "condition", "level", "side"]


def _graded(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """An OOF table's probabilities in ``columns`` as submission rows (row_id + severities)."""
    keys = zip(table["study_id"], table["condition"], table["level"], strict=True)
    out = pd.DataFrame(table[columns].to_numpy(), columns=list(vocab.SEVERITY_COLUMNS))
    out.insert(0, "row_id", [vocab.row_id(*k) for k in keys])
    return out


def ensemble_table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The mean of several models' OOF tables of one group (the same crops, any order)."""
    first = tables[0].sort_values(KEYS, kind="stable").reset_index(drop=True)
    columns = list(vocab.SEVERITY_COLUMNS) + RAW_COLUMNS
    total = first[columns].to_numpy(dtype=np.float64)
    for t in tables[1:]:
        t = t.sort_values(KEYS, kind="stable").reset_index(drop=True)
        if len(t) != len(first) or not t[KEYS].equals(first[KEYS]):
            raise DataError("ensemble: the backbones' out-of-fold tables hold different crops")
        total = total + t[columns].to_numpy(dtype=np.float64)
    out = first.copy()
    out[columns] = total / len(tables)
    return out


@dataclass
class Evaluation:
    """What evaluate writes: the report (a DVC metric), confusion tables, submissions, the
    reliability points per (group, model) for the calibration plots, and the ensemble's
    OOF table per group (compare-backbones logs it as the ensemble rows' dataset)."""

    report: dict
    confusions: dict[tuple[str, str], pd.DataFrame]  # (group, model) -> actual, predicted
    submissions: dict[str, pd.DataFrame]  # model -> OOF submission (calibrated)
    reliability: dict[tuple[str, str], dict] = field(default_factory=dict)  # raw, calibrated
    ensembles: dict[str, pd.DataFrame] = field(default_factory=dict)  # group -> OOF table


def _prior_filled(
    graded: pd.DataFrame, fold_studies: dict[int, list[int]], priors: dict[int, pd.DataFrame]
) -> pd.DataFrame:
    """The submission of every scored study, each fold's studies filled from its own prior."""
    return pd.concat(
        [fill_submission(graded, studies, priors[f]) for f, studies in fold_studies.items()],
        ignore_index=True,
    )


def evaluate(
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    oof: dict[tuple[str, str], pd.DataFrame],
    groups: list[str],
    backbones: list[str],
    settings: EvaluateConfig | None = None,
) -> Evaluation:
    """Score every (group, model) OOF table and every model's assembled submission.

    Args:
        labels: ingest's long label table.
        folds: (study_id, fold).
        oof: (group, backbone) -> the training stage's oof.csv (calibrated severity
            columns and ``raw_`` ones).
        groups, backbones: the matrix that was trained.
        settings: the evaluate params (bootstrap, intervals, reliability bins, ensemble).
    """
    settings = settings or EvaluateConfig()
    solution = solution_from_labels(labels)
    fold_of = folds.set_index("study_id")["fold"]
    trained = sorted({int(f) for t in oof.values() for f in t["fold"].unique()})
    fold_studies = {f: sorted(fold_of.index[fold_of == f].astype(int).tolist()) for f in trained}
    studies = sorted(s for part in fold_studies.values() for s in part)
    # each fold's prior from the studies outside it (its training side), never from itself
    priors = {f: solution[~solution["study_id"].isin(s)] for f, s in fold_studies.items()}
    scored = solution[solution["study_id"].isin(studies) & solution["group"].isin(groups)]
    counts = bs.resample_counts(len(studies), settings.bootstrap_resamples, settings.bootstrap_seed)

    empty = pd.DataFrame(columns=list(vocab.SUBMISSION_HEADER))
    baseline_sub = _prior_filled(empty, fold_studies, priors)
    report: dict = {
        "studies": len(studies),
        "folds": trained,
        "bootstrap": {
            "resamples": settings.bootstrap_resamples,
            "seed": settings.bootstrap_seed,
            "level": settings.ci_level,
            "unit": "study",
        },
        "class_prior_baseline": rsna_score(scored, baseline_sub),
        "models": {},
    }
    models = {b: {g: oof[(g, b)] for g in groups} for b in backbones}
    if settings.ensemble and len(backbones) > 1:
        models[vocab.ENSEMBLE] = {
            g: ensemble_table([oof[(g, b)] for b in backbones]) for g in groups
        }

    confusions, submissions, reliability = {}, {}, {}
    samples: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (group, model) -> stat -> (R,)
    estimates: dict[tuple[str, str], dict[str, float]] = {}
    for name, tables in models.items():
        entry: dict = {"groups": {}}
        cal = pd.concat([_graded(t, list(vocab.SEVERITY_COLUMNS)) for t in tables.values()])
        raw = pd.concat([_graded(t, RAW_COLUMNS) for t in tables.values()])
        sub = _prior_filled(cal, fold_studies, priors)
        submissions[name] = sub
        entry["rsna"] = rsna_score(scored, sub)
        entry["rsna_raw"] = rsna_score(scored, _prior_filled(raw, fold_studies, priors))
        sums = bs.rsna_study_sums(scored, sub, studies)
        entry["rsna_ci"] = {
            term: bs.interval(entry["rsna"][term], s.resampled(counts), settings.ci_level)
            for term, s in sums.items()
            if term in entry["rsna"]
        }
        entry["rsna_ci"]["score"] = bs.interval(
            entry["rsna"]["score"], bs.rsna_score_samples(sums, counts), settings.ci_level
        )
        for group, table in tables.items():
            y = table["label"].to_numpy()
            p = table[list(vocab.SEVERITY_COLUMNS)].to_numpy()
            p_raw = table[RAW_COLUMNS].to_numpy()
            m = classification_metrics(y, p)
            m["ece"] = expected_calibration_error(p, y, settings.calibration_bins)
            m["ece_raw"] = expected_calibration_error(p_raw, y, settings.calibration_bins)
            m["rsna_term_raw"] = entry["rsna_raw"][group]
            conf = bs.study_confusions(table["study_id"].to_numpy(), y, p, studies)
            recall, f1 = bs.macro_recall_f1(np.einsum("rs,sij->rij", counts, conf))
            stats = {"rsna_term": sums[group].resampled(counts), "macro_recall": recall}
            samples[(group, name)] = stats
            estimates[(group, name)] = {
                "rsna_term": entry["rsna"][group],
                "macro_recall": m["macro_recall"],
            }
            m["ci"] = {
                "macro_recall": bs.interval(m["macro_recall"], recall, settings.ci_level),
                "macro_f1": bs.interval(m["macro_f1"], f1, settings.ci_level),
                "rsna_term": entry["rsna_ci"][group],
            }
            entry["groups"][group] = m
            confusions[(group, name)] = pd.DataFrame(
                {
                    "actual": [vocab.SEVERITIES[i] for i in y],
                    "predicted": [vocab.SEVERITIES[i] for i in p.argmax(axis=1)],
                }
            )
            reliability[(group, name)] = {
                "raw": reliability_table(p_raw, y, settings.calibration_bins),
                "calibrated": reliability_table(p, y, settings.calibration_bins),
            }
        report["models"][name] = entry

    report["paired"] = {
        group: {
            f"{a}-vs-{b}": {
                stat: bs.paired(
                    estimates[(group, a)][stat],
                    samples[(group, a)][stat],
                    estimates[(group, b)][stat],
                    samples[(group, b)][stat],
                    settings.ci_level,
                )
                for stat in ("rsna_term", "macro_recall")
            }
            for a, b in itertools.combinations(models, 2)
        }
        for group in groups
    }
    return Evaluation(report, confusions, submissions, reliability, models.get(vocab.ENSEMBLE, {}))
