"""evaluate: out-of-fold predictions -> per-group metrics and the official score per backbone.

Only the training stage's out-of-fold probabilities and the labels are read. Per backbone,
the three groups' OOF rows are assembled into a full 25-row-per-study submission for every
study of the trained folds; a labelled level without a crop (no coordinates) gets its
group's class prior from the training folds. The class-prior baseline on the same studies
(each column's class frequencies weighted 1/2/4, as rsna-metric.md defines it) is scored
alongside, so a model can be checked against "learned nothing useful".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.metrics import (
    class_prior_submission,
    classification_metrics,
    rsna_score,
    solution_rows,
)

log = logging.getLogger(__name__)

PROBA = list(vocab.SEVERITY_COLUMNS)


def solution_from_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """The long label table -> solution rows (metrics.SOLUTION_COLUMNS), as
    metrics.solution_from_wide builds them from train.csv."""
    target = labels["severity"].map(vocab.SEVERITY_INDEX)
    if target.isna().any():
        bad = labels.loc[target.isna(), "severity"].unique().tolist()
        raise ValueError(f"unknown severities in the label table: {bad}")
    return solution_rows(
        labels["study_id"].to_numpy(), labels["condition"], labels["level"], target.astype(int)
    )


def group_prior(solution: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per group, class frequencies weighted 1/2/4 and renormalised (add-one smoothed)."""
    out = {}
    for g in vocab.GROUPS:
        counts = np.bincount(solution.loc[solution["group"] == g, "target"], minlength=3) + 1.0
        p = counts * np.asarray(vocab.SEVERITY_WEIGHTS)
        out[g] = p / p.sum()
    return out


def assemble_submission(
    oof: dict[str, pd.DataFrame], studies: list[int], prior: dict[str, np.ndarray]
) -> pd.DataFrame:
    """25 rows per study: OOF probabilities where a crop was graded, else the group prior.

    Args:
        oof: group -> OOF table (study_id, condition, level, normal_mild, moderate, severe).
        studies: study ids to write, in order.
        prior: group -> (3,) probabilities for rows without a prediction.
    """
    rows = pd.DataFrame(
        [(s, c, lv) for s in studies for c in vocab.CONDITIONS for lv in vocab.LEVELS],
        columns=["study_id", "condition", "level"],
    )
    preds = pd.concat(list(oof.values()), ignore_index=True) if oof else None
    if preds is not None and len(preds):
        rows = rows.merge(
            preds[["study_id", "condition", "level", *PROBA]],
            on=["study_id", "condition", "level"],
            how="left",
            validate="one_to_one",
        )
    else:
        rows[PROBA] = np.nan
    missing = rows[PROBA[0]].isna()
    groups = rows["condition"].map(vocab.GROUP_OF_CONDITION)
    for g, p in prior.items():
        rows.loc[missing & (groups == g), PROBA] = p
    rows.insert(
        0,
        "row_id",
        [
            vocab.row_id(s, c, lv)
            for s, c, lv in zip(rows["study_id"], rows["condition"], rows["level"], strict=True)
        ],
    )
    return rows[["row_id", *PROBA]]


@dataclass
class Evaluation:
    """What evaluate writes: the report (a DVC metric), confusion tables, submissions."""

    report: dict
    confusions: dict[tuple[str, str], pd.DataFrame]  # (group, backbone) -> actual, predicted
    submissions: dict[str, pd.DataFrame]  # backbone -> OOF submission


def evaluate(
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    oof: dict[tuple[str, str], pd.DataFrame],
    groups: list[str],
    backbones: list[str],
) -> Evaluation:
    """Score every (group, backbone) OOF table and every backbone's assembled submission.

    Args:
        labels: ingest's long label table.
        folds: (study_id, fold).
        oof: (group, backbone) -> the training stage's oof.csv.
        groups, backbones: the matrix that was trained.
    """
    solution = solution_from_labels(labels)
    fold_of = folds.set_index("study_id")["fold"]
    trained = sorted({int(f) for t in oof.values() for f in t["fold"].unique()})
    studies = sorted(fold_of.index[fold_of.isin(trained)].astype(int).tolist())
    scored = solution[solution["study_id"].isin(studies) & solution["group"].isin(groups)]
    train_part = solution[~solution["study_id"].isin(studies)]
    prior = group_prior(train_part if len(train_part) else solution)
    report: dict = {"studies": len(studies), "folds": trained, "backbones": {}}

    baseline_sub = class_prior_submission(scored, studies)
    report["class_prior_baseline"] = rsna_score(scored, baseline_sub)
    confusions, submissions = {}, {}
    for backbone in backbones:
        entry: dict = {"groups": {}}
        for group in groups:
            table = oof[(group, backbone)]
            m = classification_metrics(table["label"].to_numpy(), table[PROBA].to_numpy())
            entry["groups"][group] = m
            pred = table[PROBA].to_numpy().argmax(axis=1)
            confusions[(group, backbone)] = pd.DataFrame(
                {
                    "actual": [vocab.SEVERITIES[i] for i in table["label"]],
                    "predicted": [vocab.SEVERITIES[i] for i in pred],
                }
            )
        sub = assemble_submission({g: oof[(g, backbone)] for g in groups}, studies, prior)
        submissions[backbone] = sub
        entry["rsna"] = rsna_score(scored, sub)
        report["backbones"][backbone] = entry
    return Evaluation(report, confusions, submissions)
