"""Training one (condition group, backbone) on study-level folds, with out-of-fold output.

Crops come in as ``(N, k, S, S) uint8`` (k slices as channels). Per scored (outer) fold k,
the next fold in the cycle (k + 1 mod n) is the inner validation fold, and the remaining
folds are trained on. The inner fold's studies make every choice: early stopping and the
best epoch on its validation loss, then the temperature that calibrates the probabilities
(scoring.calibration). Only then is fold k predicted, once: its out-of-fold probabilities,
raw and calibrated, are scored by evaluate and never chose anything.
The validation loss is the official metric's per-group term: cross-entropy weighted 1/2/4.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.config import Recipe, TrainConfig, TrainingConfig
from spinegrade.core.runtime import Runtime, device, seed_everything
from spinegrade.models.backbones import (
    count_parameters,
    create_backbone,
    input_normalization,
    model_flops,
    predict_proba,
)
from spinegrade.models.inputs import CropDataset
from spinegrade.scoring.calibration import apply_temperature, fit_temperature
from spinegrade.scoring.metrics import classification_metrics
from spinegrade.training.engine.augment import build_augmentation
from spinegrade.training.engine.loop import Batch, LoopSettings, fit
from spinegrade.training.graders.losses import make_loss, metric_loss

log = logging.getLogger(__name__)

OOF_KEYS = ["study_id", "condition", "level", "side", "label"]  # crop index columns kept in oof
RAW_COLUMNS = list(vocab.RAW_SEVERITY_COLUMNS)  # before temperature scaling


def inner_fold(fold: int, folds: list[int]) -> int:
    """The inner validation fold of outer fold ``fold``: the next one in ``folds``' cycle."""
    ordered = sorted(folds)
    if len(ordered) < 3:
        raise ValueError(
            f"an outer fold, an inner validation fold and training folds need >= 3 folds; "
            f"folds.csv has {ordered} (split-folds.n_folds)"
        )
    return ordered[(ordered.index(fold) + 1) % len(ordered)]


def oversample(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices where Moderate is repeated up to 1/2 and Severe up to 1/3 of Normal/Mild."""
    counts = np.bincount(labels, minlength=3)
    index = [np.arange(len(labels))]
    for cls, share in ((1, 1 / 2), (2, 1 / 3)):
        members = np.flatnonzero(labels == cls)
        extra = int(counts[0] * share) - len(members)
        if extra > 0 and len(members):
            index.append(rng.choice(members, size=extra, replace=True))
    return np.sort(np.concatenate(index))


class GraderTask:
    """The graders' part of the training loop: weighted loss, softmax probabilities, and
    validation by the metric's group term, macro recall and macro F1."""

    def __init__(self, criterion: nn.Module, labels: np.ndarray) -> None:
        self.criterion, self.labels = criterion, labels

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return self.criterion(model(x), y)

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        logits = model(batch[0])
        return {"proba": torch.softmax(logits.float(), dim=1).double().cpu().numpy()}

    def score(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        proba = outputs["proba"]
        scores = classification_metrics(self.labels, proba)
        return {
            "val_loss": metric_loss(proba, self.labels),
            "val_macro_recall": scores["macro_recall"],
            "val_macro_f1": scores["macro_f1"],
        }


@dataclass(frozen=True)
class Split:
    """One side of a fold: ``labels[i]`` grades crop ``crops[rows[i]]``. ``crops`` is an
    (N, k, S, S) uint8 array, memory-mapped or not (the whole group's, read row by row);
    ``rows`` None means every crop in order."""

    crops: np.ndarray
    labels: np.ndarray
    rows: np.ndarray | None = None

    def indices(self) -> np.ndarray:
        return np.arange(len(self.crops)) if self.rows is None else np.asarray(self.rows)


@dataclass
class FoldResult:
    """What training one fold produced."""

    state_dict: dict
    oof: np.ndarray  # (n_val, 3) probabilities of ``val`` from the best epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # images/s, peak memory (MB)


def train_fold(
    backbone: str,
    recipe: Recipe,
    cfg: TrainingConfig,
    train: Split,
    val: Split,
    seed: int,
    on_epoch: Callable[[int, dict], None] | None = None,
    desc: str = "train",
    rt: Runtime | None = None,
) -> tuple[nn.Module, FoldResult]:
    """Train one fold from scratch (or ``recipe.weights``); keep the best validation epoch.

    Args:
        backbone: timm name.
        recipe: the backbone's optimizer, schedule and model arguments.
        cfg: shared settings (epochs, patience, loss, oversampling, ...).
        train, val: the crops and labels to train on and to validate on.
        seed: seed for weights, batches and augmentation (seed + fold by convention).
        on_epoch: called with (epoch, metrics) after each epoch (e.g. to log to MLflow).
        rt: device, precision and processes (default: one process on the CPU, fp32).

    Returns:
        (model with the best weights loaded, FoldResult).
    """
    rt = rt or Runtime(device("cpu"))
    seed_everything(seed, rt.deterministic)
    train_labels, train_rows = np.asarray(train.labels), train.indices()
    val_labels = np.asarray(val.labels)
    k, size = train.crops.shape[1], train.crops.shape[2]
    model = create_backbone(
        backbone, k, size, recipe.model_kwargs, cfg.pretrained, recipe.weights or None
    )
    mean, std = input_normalization(model) if cfg.normalize == "model" else (None, None)
    idx = (
        oversample(train_labels, np.random.default_rng(seed))
        if cfg.oversample
        else np.arange(len(train_labels))
    )
    augment = build_augmentation(seed) if cfg.augment else None
    train_ds = CropDataset(train.crops, train_labels[idx], mean, std, augment, rows=train_rows[idx])
    val_ds = CropDataset(val.crops, val_labels, mean, std, rows=val.indices())
    settings = LoopSettings(
        epochs=cfg.epochs,
        patience=cfg.patience,
        batch_size=cfg.batch_size,
        seed=seed,
        desc=desc,
        drop_last=True,
        oom_hint=f"train-per-condition.training.batch_size or crop-rois.size_px (now {size} px)",
    )
    task = GraderTask(make_loss(cfg).to(rt.device), val_labels)  # class weights too
    res = fit(model, train_ds, val_ds, task, recipe, settings, rt, on_epoch)
    result = FoldResult(
        res.state, res.outputs["proba"], res.history, res.best_epoch, res.seconds, res.speed
    )
    return res.model, result


@dataclass
class GroupResult:
    """Everything one (group, backbone) job writes."""

    oof: pd.DataFrame  # index columns, fold, calibrated severity columns, RAW_COLUMNS
    inner: pd.DataFrame  # the same for the inner validation crops, plus inner_fold
    history: pd.DataFrame  # one row per (fold, epoch)
    metrics: dict  # per fold and overall, plus GFLOPs and parameters
    states: dict[int, dict]  # fold -> best state dict


class FoldHooks:
    """Callbacks around each fold (MLflow logging implements them); no-ops by default."""

    def start(self, fold: int) -> None: ...

    def epoch(self, fold: int, epoch: int, row: dict) -> None: ...

    def end(self, fold: int, model: nn.Module, metrics: dict, confusion: list) -> None: ...

    def fail(self, fold: int, error: BaseException) -> None:
        """The fold stopped with ``error`` (its run is marked failed, then it re-raises)."""


def train_group_backbone(
    crops: np.ndarray,
    index: pd.DataFrame,
    folds: pd.DataFrame,
    group: str,
    backbone: str,
    cfg: TrainConfig,
    hooks: FoldHooks | None = None,
    rt: Runtime | None = None,
) -> GroupResult:
    """Train ``backbone`` on ``group``'s crops for each configured fold; gather OOF output.

    Args:
        crops: (N, k, S, S) uint8 crops of the group; index: their table (study_id, label...).
        folds: (study_id, fold) for every study.
        cfg: train-per-condition params (training settings and recipes).
        hooks: per-fold callbacks (e.g. MLflow logging).
        rt: device, precision and processes (default: one process on the CPU, fp32).

    Returns:
        GroupResult whose ``oof`` holds the out-of-fold probabilities of every crop in the
        trained folds, from the best epoch of the model that did not see it.
    """
    hooks = hooks or FoldHooks()
    recipe = cfg.recipe(backbone)
    fold_of = index["study_id"].map(folds.set_index("study_id")["fold"])
    if fold_of.isna().any():
        missing = index.loc[fold_of.isna(), "study_id"].unique()[:5].tolist()
        raise ValueError(f"{group}: studies without a fold in folds.csv, e.g. {missing}")
    labels = index["label"].to_numpy()
    history, per_fold, states = [], {}, {}
    k, size = crops.shape[1], crops.shape[2]
    model_cost = create_backbone(backbone, k, size, recipe.model_kwargs)
    gflops, n_params = model_flops(model_cost, size, k), count_parameters(model_cost)
    del model_cost
    all_folds = sorted(int(f) for f in folds["fold"].unique())
    oof_parts, inner_parts = [], []
    for fold in cfg.training.folds:
        inner = inner_fold(fold, all_folds)
        held, val = (fold_of == fold).to_numpy(), (fold_of == inner).to_numpy()
        train = ~(held | val)
        if not held.any() or not val.any():
            raise ValueError(
                f"{group}: fold {fold} or its inner validation fold {inner} has no crops "
                f"(folds: {sorted(fold_of.unique())})"
            )
        hooks.start(fold)
        try:
            model, res = train_fold(
                backbone,
                recipe,
                cfg.training,
                Split(crops, labels[train], np.flatnonzero(train)),
                Split(crops, labels[val], np.flatnonzero(val)),
                seed=cfg.training.seed + fold,
                on_epoch=lambda e, row, f=fold: hooks.epoch(f, e, row),
                desc=f"{group}-{backbone}-fold{fold}",
                rt=rt,
            )
            # every choice is made: now the held-out fold is predicted, once
            temperature = fit_temperature(res.oof, labels[val])
            raw = _predict(model, crops, np.flatnonzero(held), cfg.training, rt)
        except BaseException as exc:
            hooks.fail(fold, exc)
            raise
        calibrated = apply_temperature(raw, temperature)
        m = classification_metrics(labels[held], calibrated)
        summary = {
            "best_epoch": res.best_epoch,
            "epochs_run": len(res.history),
            "inner_fold": inner,
            "temperature": temperature,
            "val_loss": metric_loss(res.oof, labels[val]),  # inner fold, the best epoch
            "oof_loss_raw": metric_loss(raw, labels[held]),
            "oof_loss": metric_loss(calibrated, labels[held]),
            "accuracy": m["accuracy"],
            "macro_recall": m["macro_recall"],
            "macro_precision": m["macro_precision"],
            "macro_f1": m["macro_f1"],
            "n_train": int(train.sum()),
            "n_val": int(val.sum()),
            "n_oof": int(held.sum()),
        }
        per_fold[f"fold{fold}"] = summary  # no wall-clock time here: outputs stay reproducible
        cost = {"gflops": gflops, "params": n_params, "seconds": res.seconds, **res.speed}
        hooks.end(fold, model, {**summary, **cost}, m["confusion"])
        states[fold] = res.state_dict
        oof_parts.append(_table(index, held, fold, calibrated, raw))
        inner_parts.append(
            _table(index, val, fold, apply_temperature(res.oof, temperature), res.oof).assign(
                inner_fold=inner
            )
        )
        history += [{"fold": fold, **row} for row in res.history]
    oof = pd.concat(oof_parts, ignore_index=True)
    overall = classification_metrics(
        oof["label"].to_numpy(), oof[list(vocab.SEVERITY_COLUMNS)].to_numpy()
    )
    metrics = {
        "group": group,
        "backbone": backbone,
        "gflops": gflops,
        "params": n_params,
        "in_chans": k,
        "image_size": size,
        "folds": per_fold,
        "oof": {
            key: overall[key] for key in ("accuracy", "macro_recall", "macro_precision", "macro_f1")
        },
    }
    inner_table = pd.concat(inner_parts, ignore_index=True)
    return GroupResult(oof, inner_table, pd.DataFrame(history), metrics, states)


def _predict(
    model: nn.Module, crops: np.ndarray, rows: np.ndarray, cfg: TrainingConfig, rt: Runtime | None
) -> np.ndarray:
    """(len(rows), 3) probabilities of crops ``rows``, normalised as in training."""
    mean, std = input_normalization(model) if cfg.normalize == "model" else (None, None)
    ds = CropDataset(crops, np.zeros(len(rows), dtype=np.int64), mean, std, rows=rows)
    return predict_proba(model, ds, cfg.batch_size, rt.precision if rt else "fp32")


def _table(
    index: pd.DataFrame, rows: np.ndarray, fold: int, calibrated: np.ndarray, raw: np.ndarray
) -> pd.DataFrame:
    """Index columns of crops ``rows`` (a mask), the outer fold, and both probabilities."""
    part = index.loc[rows, OOF_KEYS].copy()
    part["fold"] = fold
    part[list(vocab.SEVERITY_COLUMNS)] = calibrated
    part[RAW_COLUMNS] = raw
    return part
