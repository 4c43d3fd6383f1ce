"""split-folds: study-level folds stratified on severity (sklearn's StratifiedGroupKFold)."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from spinegrade.core import vocab
from spinegrade.core.errors import DataError


def split_folds(labels: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign every study to one fold.

    Rows are stratified on (condition group, severity) and grouped by study, so every
    label of a study lands in the same fold and each fold sees a similar severity mix.

    Args:
        labels: long label table with study_id, condition, severity.
        n_folds: number of folds (>= 2, <= number of studies).
        seed: shuffling seed; same seed and labels -> same folds.

    Returns:
        DataFrame (study_id, fold) sorted by study_id.
    """
    studies = labels["study_id"].unique()
    if len(studies) < n_folds:
        raise DataError(
            f"split-folds: {len(studies)} studies cannot fill {n_folds} folds "
            "(lower split-folds.n_folds, or use more studies)"
        )
    rows = labels.sort_values(["study_id", "condition", "level"], kind="stable").reset_index(
        drop=True
    )
    strata = rows["condition"].map(vocab.GROUP_OF_CONDITION) + ":" + rows["severity"]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of: dict[int, int] = {}
    for fold, (_, test_idx) in enumerate(splitter.split(rows, strata, groups=rows["study_id"])):
        for study in rows.loc[test_idx, "study_id"].unique():
            if fold_of.setdefault(int(study), fold) != fold:
                raise AssertionError(
                    f"study {study} assigned to folds {fold_of[int(study)]} and {fold}"
                )
    folds = pd.DataFrame(sorted(fold_of.items()), columns=["study_id", "fold"])
    return folds


def fold_report(labels: pd.DataFrame, folds: pd.DataFrame) -> dict:
    """Per fold: studies and per-group severity counts (the report)."""
    merged = labels.merge(folds, on="study_id", validate="many_to_one")
    merged["group"] = merged["condition"].map(vocab.GROUP_OF_CONDITION)
    report = {}
    for fold, part in merged.groupby("fold"):
        entry: dict = {"studies": int(part["study_id"].nunique())}
        for g in vocab.GROUPS:
            sev = part.loc[part["group"] == g, "severity"].value_counts()
            entry[g] = {
                col: int(sev.get(s, 0))
                for s, col in zip(vocab.SEVERITIES, vocab.SEVERITY_COLUMNS, strict=True)
            }
        report[f"fold{fold}"] = entry
    return report
