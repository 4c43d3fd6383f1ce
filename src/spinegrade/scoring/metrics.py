"""The official RSNA 2024 score and accuracy-style metrics (docs/rsna-metric.md).

Pure functions on tables and arrays; reading files is left to the callers. Bad input raises
:class:`DataError` whose message names the row_id(s), study or column at fault.

Tables:
- solution: one row per *labelled* (study, condition, level), columns ``SOLUTION_COLUMNS``
  (``row_id, study_id, condition, level, group, target, weight``); built by
  :func:`solution_from_wide`.
- submission: ``row_id, normal_mild, moderate, severe`` (``vocab.SUBMISSION_HEADER``), one
  row per row_id; rows the solution does not score are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

from spinegrade.core import vocab
from spinegrade.core.errors import DataError

EPS: float = float(np.finfo(np.float64).eps)
"""Clipping bound of the official metric: probabilities are clipped to [EPS, 1 - EPS]."""

SOLUTION_COLUMNS: tuple[str, ...] = (
    "row_id",
    "study_id",
    "condition",
    "level",
    "group",
    "target",
    "weight",
)

TERMS: tuple[str, ...] = ("spinal", "foraminal", "subarticular", "any_severe")
"""The four terms of the score, in report order (the first three are ``vocab.GROUPS``)."""

ANY_SEVERE_GROUP = "spinal"

_CLASSES = list(range(len(vocab.SEVERITIES)))

_CELLS: tuple[tuple[str, str], ...] = tuple(
    (c, lv) for c in vocab.CONDITIONS for lv in vocab.LEVELS
)

_SHOW = 5  # how many offending row_ids an error message lists


def _examples(items: Sequence[Any]) -> str:
    """The first few items, comma-separated, with '...' when there are more."""
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def _study_ids(values: pd.Series) -> np.ndarray:
    """A study_id column (ints or digit strings) as (S,) int64; DataError names a bad one."""
    out = np.empty(len(values), dtype=np.int64)
    for i, (where, v) in enumerate(values.items()):
        number = vocab.parse_id(v)
        if number is None:
            raise DataError(f"study_id must be an int64 integer, got {v!r} (row {where})")
        out[i] = number
    return out


def solution_from_wide(train: pd.DataFrame) -> pd.DataFrame:
    """Turn train.csv-format labels into solution rows, one per labelled cell.

    Args:
        train: (S, 26) table, ``study_id`` plus the 25 ``vocab.TRAIN_COLUMNS`` (extra columns
            are ignored); cells are "Normal/Mild", "Moderate", "Severe", or empty/NaN.

    Returns:
        (N, 7) table with ``SOLUTION_COLUMNS``: ``row_id`` (str), ``study_id`` (int64),
        ``condition``, ``level``, ``group`` (str), ``target`` (int64 class index 0/1/2) and
        ``weight`` (float64, 1/2/4). N <= 25 * S: empty labels are dropped, never scored.
        Rows are in study order of ``train``, then ``vocab.TRAIN_COLUMNS`` order.

    Raises:
        DataError: a missing column, a bad or duplicate study_id, or an unknown severity
            string (naming the column and study).
    """
    missing = [c for c in vocab.TRAIN_CSV_HEADER if c not in train.columns]
    if missing:
        raise DataError(f"labels lack column(s) {missing}; expected {list(vocab.TRAIN_CSV_HEADER)}")
    studies = _study_ids(train["study_id"])
    dup = pd.unique(studies[pd.Series(studies).duplicated().to_numpy()])
    if len(dup):
        raise DataError(f"labels repeat {len(dup)} study_id(s): {_examples(list(dup))}")

    labels = train.loc[:, list(vocab.TRAIN_COLUMNS)]
    cells = labels.to_numpy(dtype=object)  # (S, 25)
    empty = labels.isna().to_numpy() | (labels == "").to_numpy()
    known = labels.isin(vocab.SEVERITIES).to_numpy()
    bad_s, bad_c = np.nonzero(~empty & ~known)
    if len(bad_s):
        where = [
            f"study {studies[s]} column {vocab.TRAIN_COLUMNS[c]}: {cells[s, c]!r}"
            for s, c in zip(bad_s, bad_c, strict=True)
        ]
        raise DataError(
            f"labels hold {len(where)} unknown severity value(s) ({_examples(where)}); "
            f"expected one of {list(vocab.SEVERITIES)} or empty"
        )

    rows_s, rows_c = np.nonzero(~empty)  # row-major: study order, then column order
    conditions = [_CELLS[c][0] for c in rows_c]
    levels = [_CELLS[c][1] for c in rows_c]
    target = np.array([vocab.SEVERITY_INDEX[v] for v in cells[rows_s, rows_c]], dtype=np.int64)
    return solution_rows(studies[rows_s], conditions, levels, target)


def solution_rows(
    study_ids: Sequence[int] | np.ndarray,
    conditions: Sequence[str],
    levels: Sequence[str],
    target: Sequence[int] | np.ndarray,
) -> pd.DataFrame:
    """Solution rows (``SOLUTION_COLUMNS``) of labelled cells given as parallel sequences:
    study id, condition slug, level slug and class index 0/1/2."""
    studies = np.asarray(study_ids, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    conditions, levels = list(conditions), list(levels)
    return pd.DataFrame(
        {
            "row_id": [
                vocab.row_id(s, c, lv) for s, c, lv in zip(studies, conditions, levels, strict=True)
            ],
            "study_id": studies,
            "condition": conditions,
            "level": levels,
            "group": [vocab.GROUP_OF_CONDITION[c] for c in conditions],
            "target": target,
            "weight": np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)[target],
        },
        columns=list(SOLUTION_COLUMNS),
    )


def _check_solution(solution: pd.DataFrame) -> None:
    """Raise DataError unless ``solution`` is a non-empty, well-formed solution table."""
    needed = ("row_id", "study_id", "group", "target", "weight")
    missing = [c for c in needed if c not in solution.columns]
    if missing:
        raise DataError(f"solution lacks column(s) {missing}; build it with solution_from_wide")
    if solution.empty:
        raise DataError("no labelled rows to score (the solution is empty)")
    ids = solution["row_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(f"solution repeats {len(dup)} row_id(s): {_examples(list(dup))}")
    bad = ids[~solution["target"].isin(_CLASSES)]
    if len(bad):
        raise DataError(f"solution targets must be 0/1/2; bad at row_id(s) {_examples(list(bad))}")
    weight = pd.to_numeric(solution["weight"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ids[~(np.isfinite(weight) & (weight > 0))]
    if len(bad):
        raise DataError(f"solution weights must be > 0; bad at row_id(s) {_examples(list(bad))}")
    groups = solution["group"]
    bad = ids[~groups.isin(list(vocab.GROUPS))]
    if len(bad):
        raise DataError(
            f"solution groups must be {list(vocab.GROUPS)}; bad at row_id(s) {_examples(list(bad))}"
        )


def _submission_values(submission: pd.DataFrame) -> pd.DataFrame:
    """Validated (M, 3) float64 class probabilities indexed by row_id."""
    cols = list(submission.columns)
    if "row_id" not in cols:
        raise DataError(
            f"predictions lack a row_id column; expected {list(vocab.SUBMISSION_HEADER)}"
        )
    missing = [c for c in vocab.SEVERITY_COLUMNS if c not in cols]
    extra = [c for c in cols if c not in vocab.SUBMISSION_HEADER]
    if missing or extra:
        detail = "; ".join(
            part
            for part in (
                f"missing class column(s) {missing}" if missing else "",
                f"unexpected column(s) {extra}" if extra else "",
            )
            if part
        )
        raise DataError(f"predictions: {detail}; expected {list(vocab.SUBMISSION_HEADER)}")
    ids = submission["row_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DataError(f"predictions repeat {len(dup)} row_id(s): {_examples(list(dup))}")

    values = {}
    bad: list[str] = []
    for col in vocab.SEVERITY_COLUMNS:
        raw = submission[col]
        x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        wrong = ~np.isfinite(x) | (x < 0)
        bad += [f"{i} {col}={v!r}" for i, v in zip(ids[wrong], raw[wrong], strict=True)]
        values[col] = x
    if bad:
        raise DataError(
            f"predictions hold {len(bad)} value(s) that are not finite numbers >= 0: "
            f"{_examples(bad)}"
        )
    return pd.DataFrame(values, index=pd.Index(ids.to_numpy(), name="row_id"))


def weighted_log_loss(target: np.ndarray, proba: np.ndarray, weight: np.ndarray) -> float:
    """Weighted multi-class log loss, clipped to [EPS, 1 - EPS] then row-renormalized.

    Args:
        target: (N,) int class indices.
        proba: (N, 3) non-negative scores.
        weight: (N,) sample weights.
    """
    return float(np.sum(weight * _nll(target, proba)) / np.sum(weight))


def _nll(target: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """(N,) -ln p[target], p clipped to [EPS, 1 - EPS] and row-renormalized as the metric does."""
    p = np.clip(proba, EPS, 1.0 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(target)), target])


def _any_severe_loss(
    study: np.ndarray, target: np.ndarray, weight: np.ndarray, severe: np.ndarray
) -> float:
    """Binary log loss of "any level Severe" per study, from spinal rows (N,) each.

    Per study: target 1 if any level is Severe, weight = max row weight, q = max raw
    ``severe`` score (not renormalized) clipped to [EPS, 1 - EPS].
    """
    per_study = (
        pd.DataFrame({"study": study, "t": target == 2, "w": weight, "q": severe})
        .groupby("study", sort=True)
        .max()
    )
    t = per_study["t"].to_numpy(dtype=np.float64)
    w = per_study["w"].to_numpy(dtype=np.float64)
    q = np.clip(per_study["q"].to_numpy(dtype=np.float64), EPS, 1.0 - EPS)
    nll = -(t * np.log(q) + (1.0 - t) * np.log(1.0 - q))
    return float(np.sum(w * nll) / np.sum(w))


def aligned_probabilities(solution: pd.DataFrame, submission: pd.DataFrame) -> np.ndarray:
    """(N, 3) the submission's scores of each solution row, aligned by row_id, after the
    checks rsna_score documents (DataError names what is wrong)."""
    _check_solution(solution)
    values = _submission_values(submission)
    ids = solution["row_id"].astype(str)
    absent = ids[~ids.isin(values.index)]
    if len(absent):
        raise DataError(
            f"{len(absent)} of {len(ids)} scored row_id(s) have no prediction: "
            f"{_examples(list(absent))}"
        )
    return values.loc[ids.to_numpy(), list(vocab.SEVERITY_COLUMNS)].to_numpy()


def row_losses(solution: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Each solution row's cost in its group term: ``wnll`` = weight * -ln p[target] (p
    clipped and renormalized as the metric does), with study_id, group, target and weight;
    indexed by row_id, in solution order. A group term is sum(wnll) / sum(weight) over its
    rows (``rsna_score``)."""
    proba = aligned_probabilities(solution, submission)
    target = solution["target"].to_numpy(dtype=np.int64)
    weight = pd.to_numeric(solution["weight"]).to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "study_id": solution["study_id"].to_numpy(),
            "group": solution["group"].to_numpy(),
            "target": target,
            "weight": weight,
            "wnll": weight * _nll(target, proba),
            "severe": proba[:, 2],
        },
        index=pd.Index(solution["row_id"].astype(str).to_numpy(), name="row_id"),
    )


def rsna_score(solution: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float]:
    """The official RSNA 2024 score: sample-weighted log loss, lower is better.

    Predictions are aligned to solution rows by row_id (never by position). Each group term
    clips to [EPS, 1 - EPS], renormalizes rows and averages -ln p[true] with weights 1/2/4;
    ``any_severe`` is the per-study binary loss of the largest raw spinal ``severe`` score.
    ``score`` is the plain mean of the terms.

    A group with no labelled rows in ``solution`` cannot be scored: its term (and, for
    spinal, ``any_severe``) is left out of the returned dict and out of the mean, and a
    warning names it. No value returned is ever NaN.

    Args:
        solution: (N, 7) labelled rows, as from :func:`solution_from_wide`.
        submission: (M, 4) ``row_id, normal_mild, moderate, severe``; non-negative finite
            scores (rows need not sum to 1). Rows not in the solution are ignored, but every
            row must still hold valid values.

    Returns:
        ``{"score", "spinal", "foraminal", "subarticular", "any_severe"}`` as floats.

    Raises:
        DataError: a scored row_id without prediction (names some and how many), duplicate
            row_ids, missing or extra columns, non-finite or negative values, or an empty or
            malformed solution.
    """
    proba = aligned_probabilities(solution, submission)  # (N, 3)
    target = solution["target"].to_numpy(dtype=np.int64)
    weight = pd.to_numeric(solution["weight"]).to_numpy(dtype=np.float64)
    group = solution["group"].to_numpy()

    terms: dict[str, float] = {}
    for name in vocab.GROUPS:
        rows = group == name
        if rows.any():
            terms[name] = weighted_log_loss(target[rows], proba[rows], weight[rows])
    if ANY_SEVERE_GROUP in terms:
        rows = group == ANY_SEVERE_GROUP
        study = solution["study_id"].to_numpy()[rows]
        terms["any_severe"] = _any_severe_loss(study, target[rows], weight[rows], proba[rows, 2])
    left_out = [t for t in TERMS if t not in terms]
    if left_out:
        log.warning("rsna score: no labelled rows for %s; left out of the mean", left_out)
    return {"score": float(np.mean(list(terms.values()))), **terms}


def class_prior_submission(
    solution_or_labels: pd.DataFrame, study_ids: Iterable[int]
) -> pd.DataFrame:
    """The class-prior baseline: each column's weighted class frequencies, for every study.

    Per train.csv column (condition x level), the labelled class counts are multiplied by
    the weights 1/2/4 and renormalized: the best constant prediction for the group terms.
    A class never seen in a column gets probability 0; a column with no labels at all gets
    uniform 1/3 (with a warning).

    Args:
        solution_or_labels: a solution table (has ``target``; see :func:`solution_from_wide`)
            or train.csv-format labels (``study_id`` + the 25 columns).
        study_ids: the S studies to predict, in output order (no repeats).

    Returns:
        (25 * S, 4) submission ``row_id, normal_mild, moderate, severe``; rows ordered by
        study (as given), then ``vocab.TRAIN_COLUMNS`` order; each row sums to 1.
    """
    if "target" in solution_or_labels.columns:
        solution = solution_or_labels
        missing = [c for c in ("condition", "level", "target") if c not in solution.columns]
        if missing:
            raise DataError(f"solution lacks column(s) {missing}; build it with solution_from_wide")
    else:
        solution = solution_from_wide(solution_or_labels)
    studies = [int(s) for s in study_ids]
    dup = pd.unique(pd.Series(studies)[pd.Series(studies).duplicated()])
    if len(dup):
        raise DataError(f"study_ids repeat {len(dup)} value(s): {_examples(list(dup))}")

    weights = np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)
    counts = solution.groupby(["condition", "level", "target"]).size().to_dict()  # {(c, lv, k): n}
    prior = np.empty((len(_CELLS), len(_CLASSES)), dtype=np.float64)  # (25, 3)
    for j, (c, lv) in enumerate(_CELLS):
        mass = np.array([counts.get((c, lv, k), 0) for k in _CLASSES], dtype=np.float64) * weights
        if mass.sum() == 0:
            log.warning("class prior: no labels for %s_%s; predicting uniform 1/3", c, lv)
            mass = np.ones(len(_CLASSES))
        prior[j] = mass / mass.sum()

    out = pd.DataFrame(
        np.tile(prior, (len(studies), 1)), columns=list(vocab.SEVERITY_COLUMNS)
    )  # (25 * S, 3)
    out.insert(0, "row_id", [vocab.row_id(s, c, lv) for s in studies for c, lv in _CELLS])
    return out


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, recall, precision, F1 and confusion of argmax predictions (labelled rows).

    Classes are always the three severities (``labels=[0, 1, 2]``, ``zero_division=0``): a
    class absent from ``y_true`` still counts in the macro averages (with recall 0).

    Args:
        y_true: (N,) class indices 0/1/2 of labelled rows only (no missing markers).
        proba: (N, 3) scores per class; the prediction is the argmax (ties: lowest class).

    Returns:
        ``n``, ``accuracy``, ``macro_recall``, ``macro_precision``, ``macro_f1``;
        ``per_class``: ``{severity column: {"recall", "precision", "f1", "support"}}`` keyed
        by ``vocab.SEVERITY_COLUMNS``; ``confusion``: 3x3 list of lists of counts, rows =
        true class, columns = predicted class.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1 or p.shape != (len(y), len(_CLASSES)):
        raise DataError(f"expected y_true (N,) and proba (N, 3); got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise DataError("no labelled rows to evaluate")
    bad = np.nonzero(~np.isin(y, _CLASSES))[0]
    if len(bad):
        raise DataError(
            f"y_true must hold class indices 0/1/2 of labelled rows only; "
            f"{len(bad)} bad at position(s) {_examples(list(bad))}: {_examples(list(y[bad]))}"
        )
    bad = np.nonzero(~np.isfinite(p).all(axis=1))[0]
    if len(bad):
        raise DataError(f"proba is not finite at {len(bad)} row(s): {_examples(list(bad))}")
    y = y.astype(np.int64)
    pred = p.argmax(axis=1)
    kw: dict[str, Any] = {"labels": _CLASSES, "zero_division": 0}
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, **kw)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_recall": float(recall_score(y, pred, average="macro", **kw)),
        "macro_precision": float(precision_score(y, pred, average="macro", **kw)),
        "macro_f1": float(f1_score(y, pred, average="macro", **kw)),
        "per_class": {
            name: {
                "recall": float(recall[k]),
                "precision": float(precision[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(vocab.SEVERITY_COLUMNS)
        },
        "confusion": confusion_matrix(y, pred, labels=_CLASSES).tolist(),
    }


def solution_from_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """The long label table -> solution rows (metrics.SOLUTION_COLUMNS), as
    metrics.solution_from_wide builds them from train.csv."""
    target = labels["severity"].map(vocab.SEVERITY_INDEX)
    if target.isna().any():
        bad = labels.loc[target.isna(), "severity"].unique().tolist()
        raise DataError(f"unknown severities in the label table: {bad}")
    return solution_rows(
        labels["study_id"].to_numpy(), labels["condition"], labels["level"], target.astype(int)
    )


def submission_rows(
    study_ids: list[int], graded: pd.DataFrame, prior: pd.DataFrame
) -> pd.DataFrame:
    """The submission of ``study_ids``: 25 rows per study in sample_submission order.

    Rows ``graded`` holds (row_id + severity columns; the first of repeated ids wins) keep
    their probabilities; every other row takes ``prior``'s row (a class_prior_submission of
    the same studies). Rows are renormalized to sum to 1.
    """
    ids = [
        vocab.row_id(s, c, lv) for s in study_ids for c in vocab.CONDITIONS for lv in vocab.LEVELS
    ]
    proba = list(vocab.SEVERITY_COLUMNS)
    table = prior.set_index("row_id")[proba].reindex(ids)
    g = graded.drop_duplicates("row_id", keep="first").set_index("row_id")[proba]
    g = g[g.index.isin(ids)]
    table.loc[g.index] = g.to_numpy()
    table = table.div(table.sum(axis=1), axis=0)
    return table.reset_index(names="row_id")


log = logging.getLogger(__name__)


def fill_submission(
    graded: pd.DataFrame, studies: list[int], prior_solution: pd.DataFrame
) -> pd.DataFrame:
    """25 rows per study: ``graded``'s probabilities where it has the row, else the class
    prior of ``prior_solution`` (the labels of training studies only). evaluate and predict
    both build their submissions here, so the same probabilities score the same."""
    return submission_rows(studies, graded, class_prior_submission(prior_solution, studies))
