"""The honest comparison: bootstrap intervals, paired differences, temperature scaling,
the ensemble, one prior for evaluate and predict, and the verdicts of the table."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from spinegrade.core import vocab
from spinegrade.core.config.evaluate import EvaluateConfig
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_per_condition import TrainingConfig
from spinegrade.evaluation.compare import (
    COLUMNS,
    chosen_models,
    comparison_metrics,
    comparison_table,
    display_order,
    headline,
    to_markdown,
)
from spinegrade.evaluation.evaluate import ensemble_table, evaluate
from spinegrade.models.backbones import input_normalization, predict_proba
from spinegrade.models.inputs import CropDataset
from spinegrade.scoring import bootstrap as bs
from spinegrade.scoring.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    metric_weights,
)
from spinegrade.scoring.metrics import (
    class_prior_submission,
    classification_metrics,
    fill_submission,
    rsna_score,
    solution_from_labels,
    weighted_log_loss,
)
from spinegrade.training.graders.fit import Split, train_fold

LEVELS = list(vocab.LEVELS)


def _labels(n_studies: int, seed: int) -> pd.DataFrame:
    """A long label table: every condition and level of ``n_studies`` studies."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "study_id": 100 + s,
            "condition": c,
            "level": lv,
            "severity": vocab.SEVERITIES[rng.choice(3, p=[0.7, 0.2, 0.1])],
        }
        for s in range(n_studies)
        for c in vocab.CONDITIONS
        for lv in LEVELS
    ]
    return pd.DataFrame(rows)


def _noisy_proba(labels: np.ndarray, skill: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that put ``skill`` extra logit on the true class, plus noise."""
    logits = rng.normal(0, 1, (len(labels), 3))
    logits[np.arange(len(labels)), labels] += skill
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _oof(labels: pd.DataFrame, folds: pd.DataFrame, skill: float, seed: int) -> dict:
    """OOF tables per group for the studies of fold 0, as the training stage writes them."""
    rng = np.random.default_rng(seed)
    scored = labels[labels["study_id"].isin(folds.loc[folds["fold"] == 0, "study_id"])]
    out = {}
    for group, spec in vocab.GROUPS.items():
        part = scored[scored["condition"].isin(spec.conditions)].reset_index(drop=True)
        y = part["severity"].map(vocab.SEVERITY_INDEX).to_numpy()
        raw = _noisy_proba(y, skill, rng)
        table = part[["study_id", "condition", "level"]].assign(
            side=[vocab.side_of(c) for c in part["condition"]], label=y, fold=0
        )
        table[list(vocab.SEVERITY_COLUMNS)] = apply_temperature(raw, 1.3)
        table[list(vocab.RAW_SEVERITY_COLUMNS)] = raw
        out[group] = table
    return out


# ----------------------------------------------------------------------------- bootstrap


def test_study_sums_reproduce_the_official_score():
    labels = _labels(12, 0)
    solution = solution_from_labels(labels)
    studies = sorted(labels["study_id"].unique())
    rng = np.random.default_rng(1)
    sub = class_prior_submission(solution, studies)
    sub[list(vocab.SEVERITY_COLUMNS)] = rng.dirichlet([1, 1, 1], len(sub))
    score = rsna_score(solution, sub)
    sums = bs.rsna_study_sums(solution, sub, studies)
    for term in ("spinal", "foraminal", "subarticular", "any_severe"):
        assert sums[term].estimate() == pytest.approx(score[term], rel=1e-12)
    ones = np.ones((1, len(studies)))  # the "resample" that is the sample itself
    assert bs.rsna_score_samples(sums, ones)[0] == pytest.approx(score["score"], rel=1e-12)


def test_study_scores_are_each_studys_own_official_score():
    """One study's row equals rsna_score on that study's rows alone, also for a study
    without spinal labels (no spinal or any_severe term: NaN, left out of its mean)."""
    labels = _labels(6, 3)
    no_spinal = (labels["study_id"] == 101) & labels["condition"].str.startswith("spinal")
    labels = labels[~no_spinal]
    solution = solution_from_labels(labels)
    studies = sorted(labels["study_id"].unique())
    sub = class_prior_submission(solution, studies)
    sub[list(vocab.SEVERITY_COLUMNS)] = np.random.default_rng(4).dirichlet([1, 1, 1], len(sub))
    table = bs.study_scores(bs.rsna_study_sums(solution, sub, studies))
    assert list(table.index) == studies
    for study in studies:
        with warnings.catch_warnings():  # rsna_score warns of the missing spinal group
            warnings.simplefilter("ignore")
            own = rsna_score(solution[solution["study_id"] == study], sub)
        for term in ("score", "spinal", "foraminal", "subarticular", "any_severe"):
            if term in own:
                assert table.at[study, term] == pytest.approx(own[term], rel=1e-12)
            else:
                assert np.isnan(table.at[study, term])
    assert np.isnan(table.at[101, "spinal"]) and np.isnan(table.at[101, "any_severe"])


def test_confusion_counts_give_the_same_recall_and_f1_as_sklearn():
    rng = np.random.default_rng(2)
    y = rng.choice(3, 200, p=[0.6, 0.3, 0.1])
    p = _noisy_proba(y, 1.0, rng)
    studies = np.repeat(np.arange(40), 5)
    conf = bs.study_confusions(studies, y, p, list(range(40)))
    recall, f1 = bs.macro_recall_f1(conf.sum(axis=0))
    m = classification_metrics(y, p)
    assert recall == pytest.approx(m["macro_recall"]) and f1 == pytest.approx(m["macro_f1"])


def _group_term_interval(n_studies: int, seed: int, resamples: int = 500) -> dict:
    labels = _labels(n_studies, 5)
    solution = solution_from_labels(labels)
    studies = sorted(labels["study_id"].unique())
    sub = class_prior_submission(solution, studies)
    y = solution.set_index("row_id").loc[sub["row_id"], "target"].to_numpy()
    sub[list(vocab.SEVERITY_COLUMNS)] = _noisy_proba(y, 1.5, np.random.default_rng(3))
    sums = bs.rsna_study_sums(solution, sub, studies)["foraminal"]
    counts = bs.resample_counts(len(studies), resamples, seed)
    return bs.interval(sums.estimate(), sums.resampled(counts), 0.95)


def test_intervals_contain_the_estimate_shrink_with_studies_and_repeat_for_a_seed():
    small, large = _group_term_interval(20, 0), _group_term_interval(320, 0)
    for ci in (small, large):
        assert ci["low"] < ci["estimate"] < ci["high"]
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])
    assert _group_term_interval(20, 0) == small  # the same seed: the same interval
    assert _group_term_interval(20, 1) != small


def test_paired_bootstrap_finds_a_planted_difference_and_not_a_model_against_itself():
    rng = np.random.default_rng(4)
    y = rng.choice(3, 400, p=[0.6, 0.3, 0.1])
    studies = np.repeat(np.arange(80), 5)
    good, bad = _noisy_proba(y, 3.0, rng), _noisy_proba(y, 0.5, rng)
    counts = bs.resample_counts(80, 1000, 0)
    weights = metric_weights(y)

    def sums(p: np.ndarray) -> bs.StudySums:
        nll = -np.log(p[np.arange(len(y)), y]) * weights
        per = pd.DataFrame({"s": studies, "num": nll, "den": weights}).groupby("s").sum()
        return bs.StudySums(per.index.to_numpy(), per["num"].to_numpy(), per["den"].to_numpy())

    a, b = sums(good), sums(bad)
    planted = bs.paired(a.estimate(), a.resampled(counts), b.estimate(), b.resampled(counts), 0.95)
    assert planted["distinguishable"] and planted["high"] < 0  # good has the lower loss
    itself = bs.paired(a.estimate(), a.resampled(counts), a.estimate(), a.resampled(counts), 0.95)
    assert not itself["distinguishable"] and itself["low"] == itself["high"] == 0


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("true_t", [0.4, 1.0, 3.0])
def test_temperature_never_raises_the_loss_it_was_fitted_on(true_t):
    rng = np.random.default_rng(int(true_t * 10))
    for trial in range(5):
        y = rng.choice(3, 150, p=[0.6, 0.3, 0.1])
        # probabilities miscalibrated by true_t (and some with no signal at all)
        p = apply_temperature(_noisy_proba(y, 2.0 * (trial % 3), rng), 1 / true_t)
        t = fit_temperature(p, y)
        w = metric_weights(y)
        assert weighted_log_loss(y, apply_temperature(p, t), w) <= weighted_log_loss(y, p, w)


def test_temperature_softens_overconfidence_and_lowers_the_calibration_error():
    rng = np.random.default_rng(7)
    y = rng.choice(3, 2000, p=[0.6, 0.3, 0.1])
    overconfident = apply_temperature(_noisy_proba(y, 1.5, rng), 0.3)
    t = fit_temperature(overconfident, y)
    assert t > 1.5  # softened
    after = apply_temperature(overconfident, t)
    assert expected_calibration_error(after, y) < 0.5 * expected_calibration_error(overconfident, y)
    np.testing.assert_array_equal(after.argmax(axis=1), overconfident.argmax(axis=1))


def test_a_trained_model_beats_the_class_prior_on_held_out_data():
    """Crops whose centre brightness encodes the grade: a model trained on one set must
    beat the class prior (fitted on the training labels) on another by a margin, in the
    metric's own weighted log loss."""

    def crops(n: int, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        y = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
        x = rng.integers(0, 60, size=(n, 3, 16, 16)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, :, 5:11, 5:11] += np.uint8(60 * (k + 1))
        return Split(x, y)

    train, val, test = crops(192, 0), crops(64, 1), crops(128, 2)
    # "model" normalization keeps the brightness that encodes the grade ("crop" would not)
    cfg = TrainingConfig(epochs=3, batch_size=32, patience=3, augment=False, normalize="model")
    model, res = train_fold("resnet18", Recipe(lr=1e-3), cfg, train, val, seed=0)
    t = fit_temperature(res.oof, val.labels)
    mean, std = input_normalization(model)
    test_set = CropDataset(test.crops, test.labels, mean, std)
    p = apply_temperature(predict_proba(model, test_set, 64), t)
    w = metric_weights(test.labels)
    prior = np.bincount(train.labels, minlength=3) * np.asarray(vocab.SEVERITY_WEIGHTS)
    prior_loss = weighted_log_loss(test.labels, np.tile(prior / prior.sum(), (128, 1)), w)
    assert weighted_log_loss(test.labels, p, w) < prior_loss - 0.3


# --------------------------------------------------------------------- evaluate, predict


def _fixture(n_studies: int = 25):
    labels = _labels(n_studies, 9)
    studies = sorted(labels["study_id"].unique())
    folds = pd.DataFrame({"study_id": studies, "fold": np.arange(len(studies)) % 5})
    backbones = ["a", "b"]
    oof = {}
    for i, b in enumerate(backbones):
        for g, t in _oof(labels, folds, 1.0 + 2.0 * i, seed=i).items():
            oof[(g, b)] = t
    return labels, folds, oof, backbones


def test_evaluate_and_predict_score_the_same_probabilities_alike():
    labels, folds, oof, backbones = _fixture()
    settings = EvaluateConfig(bootstrap_resamples=200)
    report = evaluate(labels, folds, oof, list(vocab.GROUPS), backbones, settings).report
    scored = folds.loc[folds["fold"] == 0, "study_id"].tolist()
    solution = solution_from_labels(labels)
    # predict's way: the training studies' labels as the prior, fill_submission, rsna_score
    training = solution_from_labels(labels[~labels["study_id"].isin(scored)])
    for b in backbones:
        oof_half = {(g, b): oof[(g, b)].iloc[::2] for g in vocab.GROUPS}  # half prior-filled
        graded = pd.concat(list(oof_half.values()))
        graded["row_id"] = [
            vocab.row_id(s, c, lv)
            for s, c, lv in zip(
                graded["study_id"], graded["condition"], graded["level"], strict=True
            )
        ]
        graded = graded[["row_id", *vocab.SEVERITY_COLUMNS]]
        sub = fill_submission(graded, scored, training)
        expected = rsna_score(solution[solution["study_id"].isin(scored)], sub)
        got = evaluate(labels, folds, oof_half, list(vocab.GROUPS), [b], settings).report
        assert got["models"][b]["rsna"] == pytest.approx(expected, rel=1e-12)
    # the baseline is the training studies' prior too, never the scored studies' own
    prior_only = fill_submission(
        pd.DataFrame(columns=list(vocab.SUBMISSION_HEADER)), scored, training
    )
    expected = rsna_score(solution[solution["study_id"].isin(scored)], prior_only)
    assert report["class_prior_baseline"] == pytest.approx(expected, rel=1e-12)


def test_evaluate_reports_intervals_calibration_the_ensemble_and_pairs():
    labels, folds, oof, backbones = _fixture()
    ev = evaluate(
        labels, folds, oof, list(vocab.GROUPS), backbones, EvaluateConfig(bootstrap_resamples=300)
    )
    report = ev.report
    assert list(report["models"]) == ["a", "b", vocab.ENSEMBLE]
    for entry in report["models"].values():
        assert entry["rsna_ci"]["score"]["low"] <= entry["rsna"]["score"]
        assert entry["rsna"]["score"] <= entry["rsna_ci"]["score"]["high"]
        for m in entry["groups"].values():
            assert {"ece", "ece_raw", "rsna_term_raw", "ci"} <= set(m)
    ens = ensemble_table([oof[("spinal", b)] for b in backbones])
    mean = (oof[("spinal", "a")]["severe"].to_numpy() + oof[("spinal", "b")]["severe"]) / 2
    np.testing.assert_allclose(ens["severe"], mean.to_numpy())
    assert set(report["paired"]["spinal"]) == {"a-vs-b", "a-vs-ensemble", "b-vs-ensemble"}
    # "b" has three times "a"'s skill: the paired test must see it in every group
    for group in vocab.GROUPS:
        assert report["paired"][group]["a-vs-b"]["rsna_term"]["distinguishable"]


def test_comparison_table_marks_what_it_cannot_rank():
    labels, folds, oof, _ = _fixture()
    # "twin" is "b" again: nothing can separate them; "a" has a third of their skill
    oof.update({(g, "twin"): oof[(g, "b")].copy() for g in vocab.GROUPS})
    models = ["a", "b", "twin"]
    costs = {(g, m): {"gflops": 1.0, "params": 2e6} for g in vocab.GROUPS for m in models}
    ev = evaluate(
        labels,
        folds,
        oof,
        list(vocab.GROUPS),
        models,
        EvaluateConfig(bootstrap_resamples=300, ensemble=False),
    ).report
    table = comparison_table(ev, costs)
    for group in vocab.GROUPS:
        verdict = table[table["group"] == group].set_index("model")["verdict"]
        assert verdict.to_dict() == {"b": "best", "twin": "not distinguishable", "a": "worse"}
    assert not ev["paired"]["spinal"]["b-vs-twin"]["rsna_term"]["distinguishable"]
    # the choice (predict's, the registry's) is each group's best row; the JSON report
    # holds every row under "{group}.{model}"
    assert chosen_models(table) == dict.fromkeys(vocab.GROUPS, "b")
    # the metrics summary DVC compares: the choice with its term and interval per group,
    # the score and the mean macro recall per model, and the MLflow parent run
    summary = headline(table, "0123abcd")
    assert summary["mlflow_parent_run"] == "0123abcd"
    for group, chosen in summary["groups"].items():
        row = table[(table["group"] == group) & (table["model"] == "b")].iloc[0]
        assert chosen == {
            "model": "b",
            "rsna_group_term": row["rsna_group_term"],
            "rsna_group_term_low": row["rsna_group_term_low"],
            "rsna_group_term_high": row["rsna_group_term_high"],
        }
    assert list(summary["groups"]) == list(vocab.GROUPS)
    for model in models:
        rows = table[table["model"] == model]
        assert summary["models"][model] == {
            "rsna_score": pytest.approx(ev["models"][model]["rsna"]["score"]),
            "mean_macro_recall": pytest.approx(rows["macro_recall"].mean()),
        }
    numbers = [v for d in summary["groups"].values() for v in d.values() if isinstance(v, float)]
    numbers += [v for d in summary["models"].values() for v in d.values()]
    assert len(numbers) == 3 * len(vocab.GROUPS) + 2 * len(models)
    metrics = comparison_metrics(table)
    assert set(metrics) == {f"{g}.{m}" for g in vocab.GROUPS for m in models}
    assert set(metrics["spinal.twin"]) == set(COLUMNS[2:])
    assert metrics["spinal.twin"]["verdict"] == "not distinguishable"
    text = to_markdown(table, ev)
    assert "not distinguishable" in text and "b - twin" in text
    assert "Class-prior baseline" in text


def test_the_ensemble_costs_the_sum_of_its_backbones():
    labels, folds, oof, backbones = _fixture()
    ev = evaluate(
        labels, folds, oof, list(vocab.GROUPS), backbones, EvaluateConfig(bootstrap_resamples=200)
    )
    costs = {(g, "a"): {"gflops": 1.0, "params": 2e6} for g in vocab.GROUPS}
    costs |= {(g, "b"): {"gflops": 3.0, "params": 5e6} for g in vocab.GROUPS}
    ens = comparison_table(ev.report, costs).query("model == 'ensemble'")
    assert len(ens) == 3 and (ens["gflops"] == 4.0).all() and (ens["params_m"] == 7.0).all()


def test_the_comparison_runs_list_the_backbones_group_by_group_then_the_ensemble():
    labels, folds, oof, backbones = _fixture()
    ev = evaluate(
        labels, folds, oof, list(vocab.GROUPS), backbones, EvaluateConfig(bootstrap_resamples=200)
    )
    costs = {(g, b): {"gflops": 1.0, "params": 2e6} for g in vocab.GROUPS for b in backbones}
    table = comparison_table(ev.report, costs)
    shown = display_order(table)
    n = len(vocab.GROUPS) * len(backbones)
    pd.testing.assert_frame_equal(
        shown.iloc[:n], table[table["model"] != vocab.ENSEMBLE].reset_index(drop=True)
    )
    assert (shown["model"].iloc[n:] == vocab.ENSEMBLE).all()
    assert list(shown["group"].iloc[n:]) == list(dict.fromkeys(table["group"]))
