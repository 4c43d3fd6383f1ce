"""Study-level bootstrap intervals for the headline numbers, and paired differences.

Studies, not rows, are resampled: a study's 25 rows (and its crops) are correlated, so a
row-level bootstrap would give intervals far too narrow. Every statistic here is a ratio of
per-study sums (a weighted log loss is sum(w * nll) / sum(w); a recall is correct / support),
so one resample is a vector of study multiplicities ``c`` and the statistic is
``c @ numerator / c @ denominator``: a thousand resamples cost a matrix product.

A paired comparison evaluates two models on the *same* resamples and takes the interval of
their difference; the difference is "distinguishable" when that interval excludes zero.
Percentile intervals throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.scoring.metrics import ANY_SEVERE_GROUP, EPS, TERMS, row_losses


def resample_counts(n_studies: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_studies) multiplicities of the studies in each bootstrap resample
    (each row sums to n_studies); the same seed and sizes give the same matrix."""
    if n_studies < 1 or resamples < 1:
        raise DataError(f"bootstrap needs studies and resamples (got {n_studies}, {resamples})")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_studies, np.full(n_studies, 1.0 / n_studies), size=resamples)


@dataclass(frozen=True)
class StudySums:
    """Per study (rows in ``studies`` order): numerator and denominator of a ratio statistic."""

    studies: np.ndarray  # (S,) study ids
    num: np.ndarray  # (S,) or (S, ...) summed per study
    den: np.ndarray

    def estimate(self) -> float:
        return float(_ratio(self.num.sum(axis=0), self.den.sum(axis=0)))

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """(R,) the statistic in each resample (NaN where a resample has no denominator)."""
        return _ratio(counts @ self.num, counts @ self.den)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def rsna_study_sums(
    solution: pd.DataFrame, submission: pd.DataFrame, studies: list[int]
) -> dict[str, StudySums]:
    """Each term of the rsna score as per-study sums, ``studies`` in order.

    ``rsna_score`` on the same tables equals ``sums[term].estimate()`` for every term
    (tested); studies without rows of a term contribute 0 / 0.
    """
    scored = solution[solution["study_id"].isin(studies)]
    rows = row_losses(scored, submission)  # validates both tables with its error messages
    order = np.asarray(studies)
    out = {}
    for term in vocab.GROUPS:
        part = rows[rows["group"] == term].groupby("study_id")[["wnll", "weight"]].sum()
        part = part.reindex(order, fill_value=0.0)
        out[term] = StudySums(order, part["wnll"].to_numpy(), part["weight"].to_numpy())
    spinal = rows[rows["group"] == ANY_SEVERE_GROUP]
    per_study = (
        pd.DataFrame(
            {
                "study_id": spinal["study_id"].to_numpy(),
                "t": spinal["target"].to_numpy() == 2,
                "w": spinal["weight"].to_numpy(),
                "q": spinal["severe"].to_numpy(dtype=np.float64),
            }
        )
        .groupby("study_id")
        .max()
        .reindex(order)
    )
    has = per_study["w"].notna().to_numpy()
    t = per_study["t"].fillna(False).to_numpy(dtype=np.float64)
    w = per_study["w"].fillna(0.0).to_numpy(dtype=np.float64)
    q = np.clip(per_study["q"].fillna(0.5).to_numpy(dtype=np.float64), EPS, 1.0 - EPS)
    nll = -(t * np.log(q) + (1.0 - t) * np.log(1.0 - q))
    out["any_severe"] = StudySums(order, np.where(has, w * nll, 0.0), w)
    return out


def study_scores(sums: dict[str, StudySums]) -> pd.DataFrame:
    """Each study's own rsna score: per study (rows in the sums' order) every term and
    ``score``, their mean, as ``rsna_score`` on that study's rows alone would give them
    (a term the study has no rows of is NaN and left out of the mean)."""
    first = next(iter(sums.values()))
    table = pd.DataFrame({t: _ratio(s.num, s.den) for t, s in sums.items()}, index=first.studies)
    table["score"] = table[list(sums)].mean(axis=1, skipna=True)
    return table


def rsna_score_samples(sums: dict[str, StudySums], counts: np.ndarray) -> np.ndarray:
    """(R,) the rsna score (mean of the terms present) in each resample."""
    terms = [t for t in TERMS if t in sums and sums[t].den.sum() > 0]
    return np.mean([sums[t].resampled(counts) for t in terms], axis=0)


def study_confusions(
    study_ids: np.ndarray, labels: np.ndarray, proba: np.ndarray, studies: list[int]
) -> np.ndarray:
    """(S, 3, 3) confusion counts (true x predicted argmax) per study, ``studies`` order."""
    index = {int(s): i for i, s in enumerate(studies)}
    rows = np.array([index.get(int(s), -1) for s in study_ids])
    if (rows < 0).any():
        missing = sorted({int(s) for s in np.asarray(study_ids)[rows < 0]})[:5]
        raise DataError(f"predictions of studies outside the bootstrap's set, e.g. {missing}")
    out = np.zeros((len(studies), 3, 3), dtype=np.float64)
    np.add.at(out, (rows, np.asarray(labels, dtype=int), np.asarray(proba).argmax(axis=1)), 1.0)
    return out


def macro_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Macro recall and macro F1 from (..., 3, 3) confusion counts (zero division -> 0, as
    ``classification_metrics`` does)."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    support = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    return np.nan_to_num(recall).mean(axis=-1), np.nan_to_num(f1).mean(axis=-1)


def interval(estimate: float, samples: np.ndarray, level: float) -> dict[str, float]:
    """``{"estimate", "low", "high"}``: the point estimate and the percentile interval."""
    low, high = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}


def paired(
    estimate_a: float, samples_a: np.ndarray, estimate_b: float, samples_b: np.ndarray, level: float
) -> dict:
    """The difference a - b on paired resamples: its interval and whether it excludes 0."""
    diff = interval(estimate_a - estimate_b, samples_a - samples_b, level)
    return {**diff, "distinguishable": bool(diff["low"] > 0 or diff["high"] < 0)}


def score_intervals(solution: pd.DataFrame, submission: pd.DataFrame, settings) -> dict:
    """The rsna score and each term with its study-level bootstrap interval, over every
    study of ``solution``; ``settings`` has bootstrap_resamples, bootstrap_seed, ci_level
    (``core.config.intervals.IntervalSettings``: the evaluate or the predict params)."""
    studies = sorted(int(s) for s in solution["study_id"].unique())
    sums = rsna_study_sums(solution, submission, studies)
    counts = resample_counts(len(studies), settings.bootstrap_resamples, settings.bootstrap_seed)
    present = {t: s for t, s in sums.items() if s.den.sum() > 0}  # as rsna_score leaves out
    out = {
        t: interval(s.estimate(), s.resampled(counts), settings.ci_level)
        for t, s in present.items()
    }
    score = float(np.mean([s.estimate() for s in present.values()]))
    out["score"] = interval(score, rsna_score_samples(sums, counts), settings.ci_level)
    return out
