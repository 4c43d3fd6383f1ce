"""Training one (condition group, backbone) on study-level folds, with out-of-fold output.

Crops come in as ``(N, k, S, S) uint8`` (k slices as channels). Every scored (outer) fold
has an inner validation fold whose studies make every choice for it: the best epoch on
their validation loss (and early stopping), then the temperature that calibrates the
probabilities (scoring.calibration). Its own studies choose nothing: their out-of-fold
probabilities, raw and calibrated, at the chosen epoch, are what evaluate scores.

The scored folds are paired in the order given (``fold_plan``): a pair (a, b) is held out
of one training run, a's inner fold is b and b's is a, so each is chosen for by the other
and neither is trained on: two folds scored for the cost of one run. Such a run trains
every epoch, since stopping early on either fold's loss would be a choice its own
studies made. A last fold without a partner gets the next fold in the cycle (k + 1 mod n)
as its inner fold, with early stopping on it. The other folds are trained on.
The validation loss is the official metric's per-group term: cross-entropy weighted 1/2/4.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_per_condition import TrainingConfig, TrainPerConditionConfig
from spinegrade.core.runtime import Runtime, device, seed_everything
from spinegrade.models.backbones import create_backbone, input_normalization, model_cost
from spinegrade.models.inputs import CropDataset, crop_rows
from spinegrade.scoring.calibration import apply_temperature, fit_temperature
from spinegrade.scoring.metrics import classification_metrics
from spinegrade.training.engine.augment import build_augmentation
from spinegrade.training.engine.loop import Batch, Choice, LoopSettings, fit
from spinegrade.training.graders.losses import make_loss, metric_loss

log = logging.getLogger(__name__)

OOF_KEYS = ["study_id", "condition", "level", "side", "label"]  # crop index columns kept in oof
RAW_COLUMNS = list(vocab.RAW_SEVERITY_COLUMNS)  # before temperature scaling


def fold_plan(scored: Sequence[int], folds: Sequence[int]) -> list[dict[int, int]]:
    """The training runs that score ``scored``, each as {scored fold: its inner fold}.

    Pairs in the order given, then a last unpaired fold with the next fold (inner_fold):
    [0, 1] -> [{0: 1, 1: 0}]; [0, 1, 2, 3, 4] -> [{0: 1, 1: 0}, {2: 3, 3: 2}, {4: 0}].
    """
    missing = [f for f in scored if f not in folds]
    if missing:
        raise ValueError(
            f"train-per-condition.training.folds {missing} not in folds.csv ({sorted(folds)})"
        )
    runs = [{a: b, b: a} for a, b in zip(scored[0:-1:2], scored[1::2], strict=True)]
    if len(scored) % 2:
        runs.append({scored[-1]: inner_fold(scored[-1], list(folds))})
    return runs


def inner_fold(fold: int, folds: list[int]) -> int:
    """The inner validation fold of an unpaired outer fold ``fold``: the next one in
    ``folds``' cycle (a paired fold's is its partner, see :func:`fold_plan`)."""
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
    validation by the metric's group term, macro recall and macro F1.

    ``choices`` maps each scored fold to the positions (in the validation set) of its inner
    fold, whose loss chooses the fold's epoch (``inner_losses``, the loop's ``choose``).
    The epoch's reported ``val_loss`` and scores are over the one inner fold when there is
    one choice, else over the whole validation set."""

    def __init__(
        self,
        criterion: nn.Module,
        labels: np.ndarray,
        choices: dict[int, np.ndarray] | None = None,
    ) -> None:
        self.criterion, self.labels = criterion, labels
        self.choices = choices or {}
        only = list(self.choices.values())
        self.shown = only[0] if len(only) == 1 else np.arange(len(labels))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return self.criterion(model(x), y)

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        logits = model(batch[0])
        return {"proba": torch.softmax(logits.float(), dim=1).double().cpu().numpy()}

    def inner_losses(self, outputs: dict[str, np.ndarray]) -> dict[int, float]:
        """Per scored fold, the metric's group term on its inner fold."""
        proba = outputs["proba"]
        return {
            fold: metric_loss(proba[rows], self.labels[rows]) for fold, rows in self.choices.items()
        }

    def score(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        proba, labels = outputs["proba"][self.shown], self.labels[self.shown]
        scores = classification_metrics(labels, proba)
        return {
            "val_loss": metric_loss(proba, labels),
            "val_macro_recall": scores["macro_recall"],
            "val_macro_f1": scores["macro_f1"],
        }


@dataclass(frozen=True)
class Split:
    """One side of a fold: ``labels[i]`` grades crop ``crops[rows[i]]``. ``crops`` is an
    (N, k, S, S) uint8 array, memory-mapped or not (the whole group's, read row by row);
    ``rows`` picks them as CropDataset's do (``models.inputs.crop_rows``)."""

    crops: np.ndarray
    labels: np.ndarray
    rows: np.ndarray | None = None


@dataclass
class FoldResult:
    """What training one fold produced."""

    state_dict: dict
    oof: np.ndarray  # (n_val, 3) probabilities of ``val`` from the best epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # images/s, peak memory (MB)
    chosen: dict[int, Choice] = field(default_factory=dict)  # scored fold -> its epoch


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
    choices: dict[int, np.ndarray] | None = None,
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
        choices: scored fold -> positions in ``val`` of its inner fold (GraderTask); with
            more than one, every epoch is trained (no early stopping).

    Returns:
        (model with the best weights loaded, FoldResult).
    """
    rt = rt or Runtime(device("cpu"))
    seed_everything(seed, rt.deterministic)
    train_labels, train_rows = np.asarray(train.labels), crop_rows(train.crops, train.rows)
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
    val_ds = CropDataset(val.crops, val_labels, mean, std, rows=val.rows)
    settings = LoopSettings(
        epochs=cfg.epochs,
        patience=cfg.patience if len(choices or {}) <= 1 else cfg.epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        desc=desc,
        drop_last=True,
        oom_hint=f"train-per-condition.training.batch_size or crop-rois.size_px (now {size} px)",
    )
    loss = make_loss(cfg).to(rt.device)  # class weights too
    task = GraderTask(loss, val_labels, choices)
    res = fit(model, train_ds, val_ds, task, recipe, settings, rt, on_epoch, task.inner_losses)
    result = FoldResult(
        res.state,
        res.outputs["proba"],
        res.history,
        res.best_epoch,
        res.seconds,
        res.speed,
        res.chosen,
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

    def start(self, fold: int, trained_with: int | None = None) -> None:
        """Fold ``fold`` starts; ``trained_with``: the pair's first fold, whose training
        run this fold shares (its epochs are replayed, not trained again)."""

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
    cfg: TrainPerConditionConfig,
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
    gflops, n_params = model_cost(backbone, size, k, recipe.model_kwargs)
    all_folds = sorted(int(f) for f in folds["fold"].unique())
    fold_array = fold_of.to_numpy()
    oof_parts, inner_parts = [], []
    for run in fold_plan(list(cfg.training.folds), all_folds):
        held_out = sorted(set(run) | set(run.values()))
        train = ~np.isin(fold_array, held_out)
        val_rows = np.flatnonzero(~train)
        val_fold, val_labels = fold_array[val_rows], labels[val_rows]
        empty = [f for f in held_out if not (val_fold == f).any()]
        if empty or not train.any():
            raise ValueError(
                f"{group}: fold(s) {empty or held_out} have no crops to "
                f"{'score or validate on' if empty else 'leave for training'} "
                f"(folds: {sorted(fold_of.unique())})"
            )
        first = next(iter(run))
        logged: list[tuple[int, dict]] = []  # what the first fold's run got, per epoch

        def on_epoch(epoch: int, row: dict, fold: int = first, logged: list = logged) -> None:
            logged.append((epoch, row))
            hooks.epoch(fold, epoch, row)

        hooks.start(first)
        try:
            model, res = train_fold(
                backbone,
                recipe,
                cfg.training,
                Split(crops, labels[train], np.flatnonzero(train)),
                Split(crops, val_labels, val_rows),
                seed=cfg.training.seed + first,
                on_epoch=on_epoch,
                desc=f"{group}-{backbone}-fold{'+'.join(map(str, run))}",
                rt=rt,
                choices={k: np.flatnonzero(val_fold == j) for k, j in run.items()},
            )
        except BaseException as exc:
            hooks.fail(first, exc)
            raise
        for fold, inner in run.items():
            if fold != first:  # the pair's second fold: its own run, with the same curves
                hooks.start(fold, trained_with=first)
                for epoch, row in logged:
                    hooks.epoch(fold, epoch, row)
            # every choice is made (by the inner fold): now the scored fold is read, once
            choice = res.chosen[fold]
            proba = choice.outputs["proba"]
            at_inner, scored = val_fold == inner, val_fold == fold
            try:
                temperature = fit_temperature(proba[at_inner], val_labels[at_inner])
                model.load_state_dict(choice.state)
            except BaseException as exc:
                hooks.fail(fold, exc)
                raise
            raw = proba[scored]
            calibrated = apply_temperature(raw, temperature)
            m = classification_metrics(val_labels[scored], calibrated)
            summary = {
                "best_epoch": choice.epoch,
                "epochs_run": len(res.history),
                "inner_fold": inner,
                "temperature": temperature,
                "val_loss": choice.loss,  # the inner fold at the chosen epoch
                "oof_loss_raw": metric_loss(raw, val_labels[scored]),
                "oof_loss": metric_loss(calibrated, val_labels[scored]),
                "accuracy": m["accuracy"],
                "macro_recall": m["macro_recall"],
                "macro_precision": m["macro_precision"],
                "macro_f1": m["macro_f1"],
                "n_train": int(train.sum()),
                "n_val": int(at_inner.sum()),
                "n_oof": int(scored.sum()),
            }
            per_fold[f"fold{fold}"] = summary  # no wall-clock time: outputs stay reproducible
            cost = {"gflops": gflops, "params": n_params, "seconds": res.seconds, **res.speed}
            hooks.end(fold, model, {**summary, **cost}, m["confusion"])
            states[fold] = choice.state
            oof_parts.append(_table(index, fold_array == fold, fold, calibrated, raw))
            inner_proba = proba[at_inner]
            inner_parts.append(
                _table(
                    index,
                    fold_array == inner,
                    fold,
                    apply_temperature(inner_proba, temperature),
                    inner_proba,
                ).assign(inner_fold=inner)
            )
            # one training run's curve, listed under each fold it scored
            together = "+".join(map(str, run))
            history += [{"fold": fold, "run_folds": together, **row} for row in res.history]
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


def _table(
    index: pd.DataFrame, rows: np.ndarray, fold: int, calibrated: np.ndarray, raw: np.ndarray
) -> pd.DataFrame:
    """Index columns of crops ``rows`` (a mask), the outer fold, and both probabilities."""
    part = index.loc[rows, OOF_KEYS].copy()
    part["fold"] = fold
    part[list(vocab.SEVERITY_COLUMNS)] = calibrated
    part[RAW_COLUMNS] = raw
    return part
