"""Training pieces: imbalance handling, losses, schedules, and a tiny deterministic fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_per_condition import TrainingConfig, TrainPerConditionConfig
from spinegrade.core.vocab import SEVERITY_COLUMNS
from spinegrade.scoring.calibration import apply_temperature
from spinegrade.scoring.metrics import rsna_score
from spinegrade.training.engine.schedules import make_scheduler
from spinegrade.training.graders.fit import (
    RAW_COLUMNS,
    Split,
    fold_plan,
    inner_fold,
    oversample,
    train_fold,
    train_group_backbone,
)
from spinegrade.training.graders.losses import FocalLoss, make_loss, metric_loss


def test_oversampling_targets():
    labels = np.array([0] * 60 + [1] * 10 + [2] * 5)
    idx = oversample(labels, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [60, 30, 20]  # Moderate to 1/2, Severe to 1/3 of Normal/Mild
    assert set(idx[labels[idx] == 0]) == set(range(60))  # majority untouched
    plenty = np.array([0] * 10 + [1] * 8 + [2] * 6)
    assert len(oversample(plenty, np.random.default_rng(0))) == len(plenty)


def test_weighted_ce_is_the_official_group_term():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 0.0, 3.0]])
    target = torch.tensor([0, 1, 2])
    loss = make_loss(TrainingConfig(loss="weighted_ce"))(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 4.0]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    proba = torch.softmax(logits, 1).double().numpy()
    assert metric_loss(proba, target.numpy()) == pytest.approx(float(expected), rel=1e-6)


def test_metric_loss_matches_rsna_score_group_term():
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 2])
    solution = pd.DataFrame(
        {
            "row_id": [f"1_spinal_canal_stenosis_l{i}_l{i + 1}" for i in range(1, 4)],
            "study_id": 1,
            "condition": "spinal_canal_stenosis",
            "level": ["l1_l2", "l2_l3", "l3_l4"],
            "group": "spinal",
            "target": labels,
            "weight": [1.0, 2.0, 4.0],
        }
    )
    sub = pd.DataFrame(proba, columns=["normal_mild", "moderate", "severe"])
    sub.insert(0, "row_id", solution["row_id"])
    assert metric_loss(proba, labels) == pytest.approx(rsna_score(solution, sub)["spinal"])


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.1]])
    target = torch.tensor([0, 0])
    ce = FocalLoss(torch.ones(3), 0.0)(logits, target)
    focal = FocalLoss(torch.ones(3), 2.0)(logits, target)
    assert float(focal) < float(ce)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_warm_up_and_decay(schedule):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recipe = Recipe(lr=1e-3, schedule=schedule, warmup_epochs=1.0)
    sched = make_scheduler(opt, recipe, epochs=4, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = int(np.argmax(lrs))
    assert 5 <= peak <= 12  # after about one epoch of warm-up
    assert lrs[0] < lrs[peak] and lrs[-1] < 0.1 * lrs[peak]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize(("epochs", "steps"), [(1, 1), (5, 1), (2, 2), (3, 1)])
def test_schedules_survive_a_step_or_two_per_epoch(schedule, epochs, steps):
    # A dataset smaller than a batch gives one step per epoch: OneCycleLR used to divide by
    # zero there (found with a 12-study download).
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    recipe = Recipe(lr=1e-3, schedule=schedule, warmup_epochs=1.0)
    sched = make_scheduler(opt, recipe, epochs=epochs, steps_per_epoch=steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(np.isfinite(lrs)) and max(lrs) <= 1e-3 + 1e-12


def _toy_crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 16, 16) crops whose central brightness encodes the class."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
    crops = rng.integers(0, 60, size=(n, 3, 16, 16)).astype(np.uint8)
    for i, y in enumerate(labels):
        crops[i, :, 5:11, 5:11] += np.uint8(60 * (y + 1))
    return crops, labels


def test_train_fold_is_deterministic_and_returns_the_best_epoch():
    train, val = Split(*_toy_crops(96, 0)), Split(*_toy_crops(48, 1))
    cfg = TrainingConfig(epochs=2, batch_size=16, patience=2, augment=True)
    runs = [train_fold("resnet18", Recipe(lr=1e-3), cfg, train, val, seed=3) for _ in range(2)]
    (_, a), (_, b) = runs
    np.testing.assert_array_equal(a.oof, b.oof)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.oof.shape == (48, 3)
    np.testing.assert_allclose(a.oof.sum(axis=1), 1.0, rtol=1e-6)
    best = min(a.history, key=lambda h: h["val_loss"])
    assert a.best_epoch == best["epoch"]
    assert metric_loss(a.oof, val.labels) == pytest.approx(best["val_loss"], rel=1e-6)


def _train_spinal(
    n_studies: int, n_folds: int, trained: tuple[int, ...], seed: int, epochs: int = 1
):
    """train_group_backbone on toy spinal crops, 5 per study, studies in folds round-robin."""
    crops, labels = _toy_crops(5 * n_studies, seed)
    index = pd.DataFrame(
        {
            "study_id": np.repeat(np.arange(n_studies), 5),
            "condition": "spinal_canal_stenosis",
            "level": np.tile(["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"], n_studies),
            "side": "",
            "label": labels,
        }
    )
    folds = pd.DataFrame({"study_id": np.arange(n_studies), "fold": np.arange(n_studies) % n_folds})
    cfg = TrainPerConditionConfig(
        training=TrainingConfig(folds=trained, epochs=epochs, batch_size=16),
        recipes={"resnet18": Recipe()},
    )
    return folds, train_group_backbone(crops, index, folds, "spinal", "resnet18", cfg)


def test_train_group_backbone_out_of_fold_rows():
    folds, result = _train_spinal(24, 3, (0, 2), seed=2)
    assert sorted(result.oof["fold"].unique()) == [0, 2]
    fold_of = folds.set_index("study_id")["fold"]
    assert (result.oof["study_id"].map(fold_of) == result.oof["fold"]).all()  # never seen
    assert len(result.oof) == 5 * int((fold_of != 1).sum())  # 5 crops per study
    assert set(result.metrics["folds"]) == {"fold0", "fold2"}
    assert result.metrics["gflops"] > 0 and result.metrics["params"] > 1e6
    assert set(result.states) == {0, 2}
    # calibrated and raw probabilities differ only by the fold's temperature
    for fold in (0, 2):
        part = result.oof[result.oof["fold"] == fold]
        t = result.metrics["folds"][f"fold{fold}"]["temperature"]
        np.testing.assert_allclose(
            part[list(SEVERITY_COLUMNS)], apply_temperature(part[RAW_COLUMNS].to_numpy(), t)
        )


def test_no_study_that_made_a_choice_is_scored_for_it():
    """The leakage test: per outer fold, the studies that chose the epoch and fitted the
    temperature (inner.csv) are disjoint from the studies scored out of fold (oof.csv), and
    neither was trained on. Folds 0 and 3 are a pair (each chooses for the other), fold 1
    is alone (its inner fold is the next one, 2)."""
    folds, result = _train_spinal(40, 5, (0, 3, 1), seed=4)
    fold_of = folds.set_index("study_id")["fold"]
    for fold, inner, trained in ((0, 3, 120), (3, 0, 120), (1, 2, 120)):
        scored = set(result.oof.loc[result.oof["fold"] == fold, "study_id"])
        chose = set(result.inner.loc[result.inner["fold"] == fold, "study_id"])
        assert scored == set(fold_of.index[fold_of == fold])
        assert chose == set(fold_of.index[fold_of == inner])
        assert not scored & chose
        summary = result.metrics["folds"][f"fold{fold}"]
        assert summary["inner_fold"] == inner
        assert summary["n_train"] == trained and summary["n_val"] == 40 and summary["n_oof"] == 40


def test_fold_plan_pairs_the_scored_folds():
    assert fold_plan([0], range(5)) == [{0: 1}]
    assert fold_plan([0, 1], range(5)) == [{0: 1, 1: 0}]
    assert fold_plan([0, 1, 2, 3, 4], range(5)) == [{0: 1, 1: 0}, {2: 3, 3: 2}, {4: 0}]
    assert fold_plan([4, 2], range(5)) == [{4: 2, 2: 4}]
    with pytest.raises(ValueError, match=r"\[5\] not in folds.csv"):
        fold_plan([0, 5], range(5))


def test_a_pair_trains_once_and_each_fold_takes_its_own_epoch():
    """Folds 0 and 1 of one run: one training curve, each fold's epoch the one where the
    other's loss was lowest, and its weights those of that epoch."""
    folds, result = _train_spinal(30, 3, (0, 1), seed=5, epochs=3)
    history = result.history
    assert len(history) == 2 * 3  # the one curve, under each fold; no early stopping
    curve = history[history["fold"] == 0].drop(columns="fold").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        curve, history[history["fold"] == 1].drop(columns="fold").reset_index(drop=True)
    )
    for fold in (0, 1):
        summary = result.metrics["folds"][f"fold{fold}"]
        assert summary["epochs_run"] == 3 and 1 <= summary["best_epoch"] <= 3
        assert summary["inner_fold"] == 1 - fold
        assert summary["n_train"] == 50  # fold 2's ten studies, 5 crops each
        inner = result.inner[result.inner["fold"] == fold]
        assert set(inner["inner_fold"]) == {1 - fold}
        raw = inner[RAW_COLUMNS].to_numpy()
        assert summary["val_loss"] == pytest.approx(metric_loss(raw, inner["label"].to_numpy()))
    e0, e1 = (result.metrics["folds"][f"fold{f}"]["best_epoch"] for f in (0, 1))
    w0, w1 = (result.states[f]["fc.weight"] for f in (0, 1))
    assert torch.equal(w0, w1) == (e0 == e1)  # each fold keeps the weights of its epoch


def test_inner_fold_needs_three_folds():
    assert inner_fold(2, [0, 1, 2]) == 0
    with pytest.raises(ValueError, match=">= 3 folds"):
        inner_fold(0, [0, 1])
