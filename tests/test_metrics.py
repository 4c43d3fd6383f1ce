"""The official RSNA score and the accuracy-style metrics, against hand-computed cases."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.scoring.metrics import (
    EPS,
    SOLUTION_COLUMNS,
    TERMS,
    class_prior_submission,
    classification_metrics,
    row_losses,
    rsna_score,
    solution_from_wide,
)

N, M, S = vocab.SEVERITIES  # "Normal/Mild", "Moderate", "Severe"
SPINAL = [f"spinal_canal_stenosis_{lv}" for lv in vocab.LEVELS]
ONE_HOT = {0: (1.0, 0.0, 0.0), 1: (0.0, 1.0, 0.0), 2: (0.0, 0.0, 1.0)}


def wide(studies: dict[int, dict[str, str]], fill: object = "") -> pd.DataFrame:
    """A train.csv table: {study: {column: severity}}; every other cell is ``fill``."""
    rows = [
        {"study_id": s, **{c: cells.get(c, fill) for c in vocab.TRAIN_COLUMNS}}
        for s, cells in studies.items()
    ]
    return pd.DataFrame(rows, columns=list(vocab.TRAIN_CSV_HEADER))


def full(study: int, severity: str = N, **cells: str) -> dict[int, dict[str, str]]:
    """One study with all 25 cells labelled ``severity`` except the ``cells`` given."""
    return {study: {c: cells.get(c, severity) for c in vocab.TRAIN_COLUMNS}}


def submission(preds: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    """A submission table from {row_id: (normal_mild, moderate, severe)}."""
    df = pd.DataFrame.from_dict(preds, orient="index", columns=list(vocab.SEVERITY_COLUMNS))
    return df.rename_axis("row_id").reset_index()


def constant(solution: pd.DataFrame, p: tuple[float, float, float]) -> pd.DataFrame:
    """The same prediction ``p`` for every row of ``solution``."""
    return submission({r: p for r in solution["row_id"]})


def perfect(solution: pd.DataFrame) -> pd.DataFrame:
    """One-hot predictions of the true classes."""
    return submission(dict(zip(solution["row_id"], solution["target"].map(ONE_HOT), strict=True)))


@pytest.fixture
def three_studies() -> pd.DataFrame:
    """Three fully labelled studies: one Severe spinal level, one Moderate only, all Normal."""
    return wide(
        {
            **full(1, spinal_canal_stenosis_l4_l5=S, left_neural_foraminal_narrowing_l5_s1=M),
            **full(2, spinal_canal_stenosis_l3_l4=M, right_subarticular_stenosis_l4_l5=S),
            **full(3),
        }
    )


# --- solution_from_wide ---------------------------------------------------------------------


def test_solution_rows_targets_weights_and_groups():
    labels = wide(
        {
            44036939: {
                "spinal_canal_stenosis_l1_l2": N,
                "spinal_canal_stenosis_l4_l5": S,
                "left_neural_foraminal_narrowing_l5_s1": M,
                "right_subarticular_stenosis_l2_l3": N,
            }
        }
    )
    sol = solution_from_wide(labels)
    assert list(sol.columns) == list(SOLUTION_COLUMNS)
    assert list(sol["row_id"]) == [
        "44036939_spinal_canal_stenosis_l1_l2",
        "44036939_spinal_canal_stenosis_l4_l5",
        "44036939_left_neural_foraminal_narrowing_l5_s1",
        "44036939_right_subarticular_stenosis_l2_l3",
    ]
    assert list(sol["target"]) == [0, 2, 1, 0]
    assert list(sol["weight"]) == [1.0, 4.0, 2.0, 1.0]
    assert list(sol["group"]) == ["spinal", "spinal", "foraminal", "subarticular"]
    assert list(sol["condition"]) == [
        "spinal_canal_stenosis",
        "spinal_canal_stenosis",
        "left_neural_foraminal_narrowing",
        "right_subarticular_stenosis",
    ]
    assert list(sol["level"]) == ["l1_l2", "l4_l5", "l5_s1", "l2_l3"]
    assert sol["study_id"].dtype == np.int64
    assert sol["target"].dtype == np.int64


@pytest.mark.parametrize("fill", ["", np.nan, None])
def test_empty_labels_are_dropped_never_normal(fill):
    labels = wide({7: {"spinal_canal_stenosis_l1_l2": M}}, fill=fill)
    sol = solution_from_wide(labels)
    assert list(sol["row_id"]) == ["7_spinal_canal_stenosis_l1_l2"]


def test_ten_digit_study_ids_as_strings_stay_exact():
    labels = wide({4294967297: {"spinal_canal_stenosis_l1_l2": N}})
    labels["study_id"] = labels["study_id"].astype(str)
    sol = solution_from_wide(labels)
    assert sol["study_id"].tolist() == [4294967297]
    assert sol["row_id"].tolist() == ["4294967297_spinal_canal_stenosis_l1_l2"]


def test_unknown_severity_names_column_and_study():
    labels = wide({12: {"left_subarticular_stenosis_l3_l4": "moderate"}, 13: {}})
    with pytest.raises(DataError, match=r"study 12 column left_subarticular_stenosis_l3_l4"):
        solution_from_wide(labels)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda df: df.drop(columns="spinal_canal_stenosis_l5_s1"), "spinal_canal_stenosis_l5_s1"),
        (lambda df: df.assign(study_id=[5, 5]), "repeat 1 study_id"),
        (lambda df: df.assign(study_id=[5.5, 6]), "5.5"),
    ],
)
def test_bad_label_tables_raise(change, match):
    labels = wide({5: {}, 6: {}})
    with pytest.raises(DataError, match=match):
        solution_from_wide(change(labels))


# --- rsna_score: values -------------------------------------------------------------------


def test_perfect_prediction_scores_almost_zero(three_studies):
    sol = solution_from_wide(three_studies)
    result = rsna_score(sol, perfect(sol))
    # One-hot is clipped to (1 - eps, eps, eps), whose sum is 1 + eps.
    group = -math.log((1 - EPS) / (1 + EPS))
    # any-severe: q = 1 - eps for the Severe study, eps for the others.
    any_severe = -math.log(1 - EPS)
    assert list(result) == ["score", *TERMS]
    for term in ("spinal", "foraminal", "subarticular"):
        assert result[term] == pytest.approx(group, rel=1e-6, abs=0)
    assert result["any_severe"] == pytest.approx(any_severe, rel=1e-6, abs=0)
    assert 0 < result["score"] < 1e-12


def test_uniform_prediction_scores_ln3_per_group(three_studies):
    sol = solution_from_wide(three_studies)
    result = rsna_score(sol, constant(sol, (1 / 3, 1 / 3, 1 / 3)))
    for term in ("spinal", "foraminal", "subarticular"):
        assert result[term] == pytest.approx(math.log(3), rel=1e-12)
    # Study 1: Severe (t=1, w=4); study 2: Moderate (t=0, w=2); study 3: Normal (t=0, w=1).
    any_severe = (4 * math.log(3) + 2 * -math.log(2 / 3) + 1 * -math.log(2 / 3)) / 7
    assert result["any_severe"] == pytest.approx(any_severe, rel=1e-12)
    expected = (3 * math.log(3) + any_severe) / 4
    assert result["score"] == pytest.approx(expected, rel=1e-12)


def test_sample_weights_1_2_4():
    labels = wide({1: dict(zip(SPINAL, [N, N, M, S, N], strict=True))})
    sol = solution_from_wide(labels)
    result = rsna_score(sol, constant(sol, (0.5, 0.3, 0.2)))
    expected = (3 * 1 * -math.log(0.5) + 2 * -math.log(0.3) + 4 * -math.log(0.2)) / (3 + 2 + 4)
    assert result["spinal"] == pytest.approx(expected, rel=1e-12)
    # Unweighted would differ: make sure the weights matter in this case.
    assert result["spinal"] != pytest.approx(
        (3 * -math.log(0.5) - math.log(0.3) - math.log(0.2)) / 5
    )


def test_rows_are_clipped_then_renormalized():
    cols = [f"left_neural_foraminal_narrowing_{lv}" for lv in vocab.LEVELS[:3]]
    sol = solution_from_wide(wide({1: dict(zip(cols, [N, M, S], strict=True))}))
    preds = submission(
        {
            "1_" + cols[0]: (1.0, 0.6, 0.4),  # sums to 2: p(normal) = (1 - eps) / 2
            "1_" + cols[1]: (0.0, 0.0, 0.0),  # all eps: uniform 1/3
            "1_" + cols[2]: (2.0, 0.0, 6.0),  # (1 - eps, eps, 1 - eps): p(severe) = 1/2
        }
    )
    result = rsna_score(sol, preds)
    expected = (
        1 * -math.log((1 - EPS) / (1 - EPS + 0.6 + 0.4))
        + 2 * -math.log(1 / 3)
        + 4 * -math.log((1 - EPS) / (2 * (1 - EPS) + EPS))
    ) / 7
    assert result["foraminal"] == pytest.approx(expected, rel=1e-12)
    assert result["foraminal"] == pytest.approx(
        (math.log(2) + 2 * math.log(3) + 4 * math.log(2)) / 7
    )
    assert list(result) == ["score", "foraminal"]


def test_any_severe_term_by_hand():
    labels = wide(
        {
            1: dict(zip(SPINAL, [N, N, S, N, N], strict=True)),  # t=1, w=4
            2: dict(zip(SPINAL, [N, M, N, N, N], strict=True)),  # only Moderate: t=0, w=2
            3: dict(zip(SPINAL, [N, N, N, N, N], strict=True)),  # t=0, w=1
        }
    )
    sol = solution_from_wide(labels)
    severe = {1: [0.1, 0.2, 0.6, 0.1, 0.3], 2: [0.05, 0.25, 0.1, 0.0, 0.0]}
    preds = {}
    for study, values in severe.items():
        for col, q in zip(SPINAL, values, strict=True):
            preds[f"{study}_{col}"] = (1 - q, 0.0, q)
    for col in SPINAL:
        preds[f"3_{col}"] = (1.0, 0.0, 0.0)
    # Raw severe max, NOT renormalized: this row renormalized would give 1/3, raw gives 0.5.
    preds[f"3_{SPINAL[4]}"] = (0.5, 0.5, 0.5)
    result = rsna_score(sol, submission(preds))
    expected = (4 * -math.log(0.6) + 2 * -math.log(1 - 0.25) + 1 * -math.log(1 - 0.5)) / 7
    assert result["any_severe"] == pytest.approx(expected, rel=1e-12)


def test_any_severe_certain_but_wrong_is_large_but_finite():
    sol = solution_from_wide(wide({1: {SPINAL[0]: N}}))
    result = rsna_score(sol, submission({f"1_{SPINAL[0]}": (0.0, 0.0, 1.0)}))
    assert result["any_severe"] == pytest.approx(-math.log(EPS), rel=1e-9)  # about 36.04
    assert math.isfinite(result["score"])


def test_group_terms_match_sklearn_log_loss(three_studies):
    """Cross-check on rows that already sum to 1 (where clipping is the only difference)."""
    sol = solution_from_wide(three_studies)
    proba = np.random.default_rng(0).dirichlet([1.0, 1.0, 1.0], size=len(sol))
    result = rsna_score(sol, submission(dict(zip(sol["row_id"], map(tuple, proba), strict=True))))
    for group in vocab.GROUPS:
        rows = (sol["group"] == group).to_numpy()
        ref = log_loss(
            sol["target"][rows], proba[rows], sample_weight=sol["weight"][rows], labels=[0, 1, 2]
        )
        assert result[group] == pytest.approx(ref, rel=1e-9)


def test_row_losses_add_up_to_the_group_terms(three_studies):
    """Each row's cost (the review page's loss column) sums, per group, to the term."""
    sol = solution_from_wide(three_studies)
    proba = np.random.default_rng(1).dirichlet([1.0, 1.0, 1.0], size=len(sol))
    sub = submission(dict(zip(sol["row_id"], map(tuple, proba), strict=True)))
    rows = row_losses(sol, sub.iloc[::-1])  # aligned by row_id, not by position
    assert list(rows.index) == list(sol["row_id"])
    expected = -sol["weight"].to_numpy() * np.log(proba[np.arange(len(sol)), sol["target"]])
    np.testing.assert_allclose(rows["wnll"], expected, rtol=1e-12)
    score = rsna_score(sol, sub)
    for group, part in rows.groupby("group"):
        assert part["wnll"].sum() / part["weight"].sum() == pytest.approx(score[group], rel=1e-12)
    with pytest.raises(DataError, match="no prediction"):
        row_losses(sol, sub.iloc[1:])


def test_missing_labels_are_not_scored():
    labelled = {SPINAL[0]: N, SPINAL[1]: S, "left_subarticular_stenosis_l1_l2": M}
    sol = solution_from_wide(wide({9: labelled}))
    assert len(sol) == 3
    good = {f"9_{c}": (0.6, 0.3, 0.1) for c in vocab.TRAIN_COLUMNS}
    baseline = rsna_score(sol, submission({r: good[r] for r in sol["row_id"]}))
    # Terrible predictions at the 22 unlabelled cells change nothing.
    bad = {r: (good[r] if r in set(sol["row_id"]) else (0.0, 0.0, 1.0)) for r in good}
    assert rsna_score(sol, submission(bad)) == baseline
    assert rsna_score(sol, submission(good)) == baseline
    assert set(baseline) == {"score", "spinal", "subarticular", "any_severe"}


def test_row_and_column_order_do_not_matter(three_studies):
    sol = solution_from_wide(three_studies)
    proba = np.random.default_rng(1).dirichlet([1.0, 1.0, 1.0], size=len(sol))
    sub = submission(dict(zip(sol["row_id"], map(tuple, proba), strict=True)))
    expected = rsna_score(sol, sub)
    shuffled = sub.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert not shuffled["row_id"].equals(sub["row_id"])
    assert rsna_score(sol, shuffled) == pytest.approx(expected, rel=1e-12)
    reordered = shuffled[["severe", "row_id", "moderate", "normal_mild"]]
    assert rsna_score(sol, reordered) == pytest.approx(expected, rel=1e-12)
    assert rsna_score(sol.iloc[::-1], sub) == pytest.approx(expected, rel=1e-12)


def test_group_without_labels_is_left_out_of_the_mean(caplog):
    cols = ["left_neural_foraminal_narrowing_l1_l2", "right_neural_foraminal_narrowing_l1_l2"]
    sol = solution_from_wide(wide({1: {cols[0]: N, cols[1]: M}}))
    with caplog.at_level(logging.WARNING, logger="spinegrade.metrics"):
        result = rsna_score(sol, constant(sol, (1 / 3, 1 / 3, 1 / 3)))
    assert result == pytest.approx({"score": math.log(3), "foraminal": math.log(3)})
    assert "spinal" in caplog.text and "any_severe" in caplog.text
    assert not any(math.isnan(v) for v in result.values())


def test_empty_solution_raises():
    sol = solution_from_wide(wide({1: {}}))
    with pytest.raises(DataError, match="no labelled rows"):
        rsna_score(sol, constant(sol, (1.0, 0.0, 0.0)))


# --- rsna_score: errors -------------------------------------------------------------------


def test_missing_row_is_named_with_count(three_studies):
    sol = solution_from_wide(three_studies)
    sub = perfect(sol)
    gone = "2_spinal_canal_stenosis_l3_l4"
    with pytest.raises(DataError, match=rf"1 of 75 scored row_id\(s\).*{gone}"):
        rsna_score(sol, sub[sub["row_id"] != gone])
    with pytest.raises(DataError, match=r"^25 of 75 .*3_spinal_canal_stenosis_l1_l2, .*, \.\.\."):
        rsna_score(sol, sub[~sub["row_id"].str.startswith("3_")])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: pd.concat([s, s.iloc[[4]]]), r"repeat 1 row_id.*1_spinal_canal_stenosis_l5_s1"),
        (lambda s: s.drop(columns="moderate"), r"missing class column\(s\) \['moderate'\]"),
        (lambda s: s.assign(any_severe=0.0), r"unexpected column\(s\) \['any_severe'\]"),
        (lambda s: s.drop(columns="row_id"), "row_id"),
        (lambda s: _set(s, 3, "severe", np.nan), r"1_spinal_canal_stenosis_l4_l5 severe=nan"),
        (lambda s: _set(s, 3, "severe", np.inf), r"1_spinal_canal_stenosis_l4_l5 severe=inf"),
        (lambda s: _set(s, 0, "normal_mild", -0.1), r"1_spinal_canal_stenosis_l1_l2 normal_mild"),
        (lambda s: _set(s, 1, "moderate", "abc"), r"1_spinal_canal_stenosis_l2_l3 moderate='abc'"),
    ],
)
def test_bad_submissions_raise_naming_the_fault(three_studies, change, match):
    sol = solution_from_wide(three_studies)
    with pytest.raises(DataError, match=match):
        rsna_score(sol, change(perfect(sol)))


def _set(df: pd.DataFrame, row: int, col: str, value: object) -> pd.DataFrame:
    out = df.astype({col: object})
    out.loc[row, col] = value
    return out


# --- class_prior_submission ---------------------------------------------------------------


def test_class_prior_shape_order_and_row_sums(three_studies):
    prior = class_prior_submission(three_studies, [3, 1, 2])
    assert list(prior.columns) == list(vocab.SUBMISSION_HEADER)
    assert len(prior) == 3 * 25
    assert list(prior["row_id"]) == [f"{s}_{c}" for s in (3, 1, 2) for c in vocab.TRAIN_COLUMNS]
    sums = prior[list(vocab.SEVERITY_COLUMNS)].sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-12)


def test_class_prior_is_weighted_frequency_per_column(caplog):
    col = SPINAL[0]
    labels = wide({1: {col: N, SPINAL[1]: N}, 2: {col: N}, 3: {col: M}, 4: {col: S}})
    with caplog.at_level(logging.WARNING, logger="spinegrade.metrics"):
        prior = class_prior_submission(labels, [5]).set_index("row_id")
    # spinal l1_l2: counts (2, 1, 1) x weights (1, 2, 4) = (2, 2, 4) -> (0.25, 0.25, 0.5).
    np.testing.assert_allclose(prior.loc[f"5_{col}"], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(prior.loc[f"5_{SPINAL[1]}"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(prior.loc[f"5_{SPINAL[2]}"], [1 / 3, 1 / 3, 1 / 3])  # no labels
    assert "spinal_canal_stenosis_l3_l4" in caplog.text
    # Same result from the solution table.
    from_solution = class_prior_submission(solution_from_wide(labels), [5]).set_index("row_id")
    pd.testing.assert_frame_equal(from_solution, prior)


def test_class_prior_beats_uniform_on_its_own_labels():
    rng = np.random.default_rng(4)
    studies = {
        s: dict(
            zip(
                vocab.TRAIN_COLUMNS,
                rng.choice([N, M, S, ""], size=25, p=[0.65, 0.2, 0.1, 0.05]),
                strict=True,
            )
        )
        for s in range(100, 140)
    }
    labels = wide(studies)
    sol = solution_from_wide(labels)
    prior = rsna_score(sol, class_prior_submission(labels, list(studies)))
    uniform = rsna_score(sol, constant(sol, (1 / 3, 1 / 3, 1 / 3)))
    for group in vocab.GROUPS:
        assert prior[group] < uniform[group]
    assert prior["score"] < uniform["score"]


def test_class_prior_rejects_repeated_studies(three_studies):
    with pytest.raises(DataError, match="repeat 1"):
        class_prior_submission(three_studies, [1, 2, 1])


# --- classification_metrics ---------------------------------------------------------------


def test_classification_metrics_by_hand_with_absent_class():
    y_true = np.array([0, 0, 0, 1, 1])  # no Severe in the truth
    pred = [0, 0, 2, 1, 0]
    proba = np.array([[0.1, 0.1, 0.1]] * 5)
    proba[np.arange(5), pred] = 0.7
    m = classification_metrics(y_true, proba)
    # confusion (rows true): [[2, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert m["confusion"] == [[2, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recall 2/3, 1/2, 0 (absent class counts as 0); precision 2/3, 1, 0; F1 2/3, 2/3, 0.
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert list(m["per_class"]) == list(vocab.SEVERITY_COLUMNS)
    assert m["per_class"]["normal_mild"] == pytest.approx(
        {"recall": 2 / 3, "precision": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m["per_class"]["moderate"] == pytest.approx(
        {"recall": 0.5, "precision": 1.0, "f1": 2 / 3, "support": 2}
    )
    assert m["per_class"]["severe"] == {"recall": 0.0, "precision": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize(
    ("y_true", "proba", "match"),
    [
        (np.array([0, -1]), np.full((2, 3), 1 / 3), "labelled rows only"),
        (np.array([0.0, np.nan]), np.full((2, 3), 1 / 3), "labelled rows only"),
        (np.array([0, 1]), np.full((2, 2), 0.5), r"\(N, 3\)"),
        (np.array([0, 1]), np.array([[1.0, 0, 0], [np.nan, 0, 0]]), "not finite"),
        (np.array([], dtype=int), np.empty((0, 3)), "no labelled rows"),
    ],
)
def test_classification_metrics_rejects_bad_input(y_true, proba, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(y_true, proba)
