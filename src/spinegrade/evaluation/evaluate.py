"""evaluate: out-of-fold predictions -> per-group metrics and the official score per backbone.

Only the training stage's out-of-fold probabilities and the labels are read. Per backbone,
the three groups' OOF rows are assembled into a full 25-row-per-study submission for every
study of the trained folds; a labelled level without a crop (no coordinates) gets its
column's class prior from the training folds (the prior predict uses too). The class-prior
baseline on the same studies (each column's class frequencies weighted 1/2/4, as
rsna-metric.md defines it) is scored alongside, so a model can be checked against "learned
nothing useful".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from spinegrade.core import vocab
from spinegrade.scoring.metrics import (
    class_prior_submission,
    classification_metrics,
    rsna_score,
    solution_from_labels,
    submission_rows,
)

log = logging.getLogger(__name__)


def assemble_submission(
    oof: dict[str, pd.DataFrame], studies: list[int], prior: pd.DataFrame
) -> pd.DataFrame:
    """25 rows per study: OOF probabilities where a crop was graded, else the class prior.

    Args:
        oof: group -> OOF table (study_id, condition, level, normal_mild, moderate, severe).
        studies: study ids to write, in order.
        prior: class_prior_submission of ``studies`` (the rows without a prediction).
    """
    if not oof:
        return submission_rows(studies, pd.DataFrame(columns=list(vocab.SUBMISSION_HEADER)), prior)
    preds = pd.concat(list(oof.values()), ignore_index=True)
    keys = zip(preds["study_id"], preds["condition"], preds["level"], strict=True)
    graded = preds.assign(row_id=[vocab.row_id(*k) for k in keys])
    return submission_rows(studies, graded, prior)


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
    prior = class_prior_submission(train_part if len(train_part) else solution, studies)
    report: dict = {"studies": len(studies), "folds": trained, "backbones": {}}

    baseline_sub = class_prior_submission(scored, studies)
    report["class_prior_baseline"] = rsna_score(scored, baseline_sub)
    confusions, submissions = {}, {}
    for backbone in backbones:
        entry: dict = {"groups": {}}
        for group in groups:
            table = oof[(group, backbone)]
            m = classification_metrics(
                table["label"].to_numpy(), table[list(vocab.SEVERITY_COLUMNS)].to_numpy()
            )
            entry["groups"][group] = m
            pred = table[list(vocab.SEVERITY_COLUMNS)].to_numpy().argmax(axis=1)
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
