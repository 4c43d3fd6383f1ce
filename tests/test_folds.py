"""split-folds: study-level, stratified, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.data.folds import fold_report, split_folds


def _labels(n_studies=60, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        for c in vocab.CONDITIONS:
            for lv in vocab.LEVELS:
                sev = rng.choice(vocab.SEVERITIES, p=[0.75, 0.17, 0.08])
                rows.append({"study_id": 1000 + s, "condition": c, "level": lv, "severity": sev})
    return pd.DataFrame(rows)


def test_no_study_in_two_folds():
    labels = _labels()
    folds = split_folds(labels, n_folds=5, seed=1)
    assert folds["study_id"].is_unique
    assert set(folds["study_id"]) == set(labels["study_id"])
    assert set(folds["fold"]) == set(range(5))
    merged = labels.merge(folds, on="study_id")
    assert (merged.groupby("study_id")["fold"].nunique() == 1).all()


def test_deterministic_from_seed():
    labels = _labels()
    a = split_folds(labels, 5, seed=1)
    b = split_folds(labels.sample(frac=1.0, random_state=3), 5, seed=1)  # row order irrelevant
    pd.testing.assert_frame_equal(a, b)
    assert not split_folds(labels, 5, seed=2).equals(a)


def test_folds_are_balanced_and_stratified():
    labels = _labels(n_studies=100)
    folds = split_folds(labels, 5, seed=0)
    assert folds["fold"].value_counts().max() - folds["fold"].value_counts().min() <= 3
    report = fold_report(labels, folds)
    severe = [report[f"fold{k}"]["subarticular"]["severe"] for k in range(5)]
    assert all(abs(s - np.mean(severe)) <= 0.5 * np.mean(severe) for s in severe)


def test_too_few_studies():
    with pytest.raises(DataError, match="3 studies cannot fill 5 folds"):
        split_folds(_labels(n_studies=3), 5, seed=0)


def test_folds_on_generated_labels(tiny_ingest):
    folds = split_folds(tiny_ingest.labels, n_folds=4, seed=0)
    assert sorted(folds["study_id"]) == sorted(tiny_ingest.labels["study_id"].unique())
    assert folds["study_id"].is_unique
