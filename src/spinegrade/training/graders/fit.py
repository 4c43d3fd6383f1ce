"""Training one (condition group, backbone) on study-level folds, with out-of-fold output.

Crops come in as ``(N, k, S, S) uint8`` (k slices as channels). Per fold: train on the
other folds' studies, validate on this fold's, stop early on validation loss, keep the best
epoch, and predict the fold's crops with it (the out-of-fold probabilities).
The validation loss is the official metric's per-group term: cross-entropy weighted 1/2/4.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from spinegrade.core import vocab
from spinegrade.core.config import Recipe, TrainConfig, TrainingConfig
from spinegrade.core.runtime import device, seed_everything
from spinegrade.models.backbones import (
    count_parameters,
    create_backbone,
    input_normalization,
    model_flops,
    predict_proba,
)
from spinegrade.models.inputs import CropDataset
from spinegrade.scoring.metrics import classification_metrics
from spinegrade.training.engine.augment import build_augmentation
from spinegrade.training.engine.schedules import make_scheduler
from spinegrade.training.graders.losses import make_loss, metric_loss

log = logging.getLogger(__name__)

OOF_KEYS = ["study_id", "condition", "level", "side", "label"]  # crop index columns kept in oof


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


@dataclass
class FoldResult:
    """What training one fold produced."""

    state_dict: dict
    oof: np.ndarray  # (n_val, 3) probabilities of the best epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def train_fold(
    backbone: str,
    recipe: Recipe,
    cfg: TrainingConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    seed: int,
    on_epoch: Callable[[int, dict], None] | None = None,
    desc: str = "train",
) -> tuple[nn.Module, FoldResult]:
    """Train one fold from scratch (or ``recipe.weights``); keep the best validation epoch.

    Args:
        backbone: timm name.
        recipe: the backbone's optimizer, schedule and model arguments.
        cfg: shared settings (epochs, patience, loss, oversampling, ...).
        train, val: (crops (N, k, S, S) uint8, labels (N,) int).
        seed: seed for weights, batches and augmentation (seed + fold by convention).
        on_epoch: called with (epoch, metrics) after each epoch (e.g. to log to MLflow).

    Returns:
        (model with the best weights loaded, FoldResult).
    """
    start = time.perf_counter()
    seed_everything(seed)
    dev = device()
    k, size = train[0].shape[1], train[0].shape[2]
    model = create_backbone(
        backbone, k, size, recipe.model_kwargs, cfg.pretrained, recipe.weights or None
    ).to(dev)
    mean, std = input_normalization(model) if cfg.normalize == "model" else (None, None)
    rng = np.random.default_rng(seed)
    idx = oversample(train[1], rng) if cfg.oversample else np.arange(len(train[1]))
    train_ds = CropDataset(
        train[0][idx], train[1][idx], mean, std, build_augmentation(seed) if cfg.augment else None
    )
    val_ds = CropDataset(val[0], val[1], mean, std)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > cfg.batch_size,
        generator=generator,
    )
    criterion = make_loss(cfg).to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    scheduler = make_scheduler(optimizer, recipe, cfg.epochs, len(loader))
    scaler = torch.amp.GradScaler(enabled=dev.type == "cuda")

    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history: list[dict] = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, enabled=dev.type == "cuda"):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(y)
            n += len(y)
        proba = predict_proba(model, val_ds, cfg.batch_size * 2)
        scores = classification_metrics(val[1], proba)
        row = {
            "epoch": epoch,
            "train_loss": total / max(n, 1),
            "val_loss": metric_loss(proba, val[1]),
            "val_macro_recall": scores["macro_recall"],
            "val_macro_f1": scores["macro_f1"],
            "lr": float(optimizer.param_groups[0]["lr"]),
        }
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        bar.set_postfix(
            loss=f"{row['train_loss']:.3f}",
            val=f"{row['val_loss']:.3f}",
            recall=f"{row['val_macro_recall']:.2f}",
        )
        if row["val_loss"] < best[0]:
            best = (row["val_loss"], epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            log.info("%s: early stop at epoch %d (best %d)", desc, epoch, best[1])
            break
    model.load_state_dict(best[2])
    oof = predict_proba(model, val_ds, cfg.batch_size * 2)
    result = FoldResult(
        {k: v.cpu() for k, v in best[2].items()}, oof, history, best[1], time.perf_counter() - start
    )
    return model, result


@dataclass
class GroupResult:
    """Everything one (group, backbone) job writes."""

    oof: pd.DataFrame  # index columns + fold + normal_mild, moderate, severe
    history: pd.DataFrame  # one row per (fold, epoch)
    metrics: dict  # per fold and overall, plus GFLOPs and parameters
    states: dict[int, dict]  # fold -> best state dict


class FoldHooks:
    """Callbacks around each fold (MLflow logging implements them); no-ops by default."""

    def start(self, fold: int) -> None: ...

    def epoch(self, fold: int, epoch: int, row: dict) -> None: ...

    def end(self, fold: int, model: nn.Module, metrics: dict, confusion: list) -> None: ...


def train_group_backbone(
    crops: np.ndarray,
    index: pd.DataFrame,
    folds: pd.DataFrame,
    group: str,
    backbone: str,
    cfg: TrainConfig,
    hooks: FoldHooks | None = None,
) -> GroupResult:
    """Train ``backbone`` on ``group``'s crops for each configured fold; gather OOF output.

    Args:
        crops: (N, k, S, S) uint8 crops of the group; index: their table (study_id, label...).
        folds: (study_id, fold) for every study.
        cfg: train-per-condition params (training settings and recipes).
        hooks: per-fold callbacks (e.g. MLflow logging).

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
    oof_parts, history, per_fold, states = [], [], {}, {}
    k, size = crops.shape[1], crops.shape[2]
    model_cost = create_backbone(backbone, k, size, recipe.model_kwargs)
    gflops, n_params = model_flops(model_cost, size, k), count_parameters(model_cost)
    del model_cost
    for fold in cfg.training.folds:
        val = (fold_of == fold).to_numpy()
        if not val.any():
            raise ValueError(
                f"{group}: fold {fold} has no crops (folds: {sorted(fold_of.unique())})"
            )
        hooks.start(fold)
        model, res = train_fold(
            backbone,
            recipe,
            cfg.training,
            (crops[~val], labels[~val]),
            (crops[val], labels[val]),
            seed=cfg.training.seed + fold,
            on_epoch=lambda e, row, f=fold: hooks.epoch(f, e, row),
            desc=f"{group}-{backbone}-fold{fold}",
        )
        m = classification_metrics(labels[val], res.oof)
        summary = {
            "best_epoch": res.best_epoch,
            "epochs_run": len(res.history),
            "val_loss": metric_loss(res.oof, labels[val]),
            "accuracy": m["accuracy"],
            "macro_recall": m["macro_recall"],
            "macro_precision": m["macro_precision"],
            "macro_f1": m["macro_f1"],
            "n_train": int((~val).sum()),
            "n_val": int(val.sum()),
        }
        per_fold[f"fold{fold}"] = summary  # no wall-clock time here: outputs stay reproducible
        cost = {"gflops": gflops, "params": n_params, "seconds": res.seconds}
        hooks.end(fold, model, {**summary, **cost}, m["confusion"])
        states[fold] = res.state_dict
        part = index.loc[val, OOF_KEYS].copy()
        part["fold"] = fold
        part[list(vocab.SEVERITY_COLUMNS)] = res.oof
        oof_parts.append(part)
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
    return GroupResult(oof, pd.DataFrame(history), metrics, states)
