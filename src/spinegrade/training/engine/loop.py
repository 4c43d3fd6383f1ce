"""The one training loop: graders and localizers plug their dataset, loss and validation
metrics into it as a :class:`Task`; everything else is here, once.

Per epoch (numbered from 1): train over a shuffled shard of the training set (mixed
precision if asked, a gradient scaler for fp16, the schedule stepped per optimizer step),
predict the whole validation set (sharded across processes and gathered), score it, call
the epoch hook, keep the weights and validation outputs of the epoch with the lowest
validation loss, and stop after ``patience`` epochs without a lower one. A family that
chooses epochs by more losses than that one (``choose``: the graders', per scored fold)
gets, per loss, the epoch where it was lowest, chosen here by the same rule.

A non-finite training loss stops the job with an error naming the epoch and step (losses
are read on the host every ``SYNC_EVERY`` steps, not after each); under CPU bf16 autocast a
non-finite gradient stops it at that step, naming the parameter; a CUDA out-of-memory error
names the settings to lower.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from spinegrade.core.config.recipe import Recipe
from spinegrade.core.errors import TrainingError
from spinegrade.core.runtime import Runtime, peak_memory_mb
from spinegrade.training.engine.distributed import all_sum, gather_shards
from spinegrade.training.engine.loader import SeededSampler, make_loader
from spinegrade.training.engine.schedules import make_scheduler

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]

# Training steps between host syncs (the loss check and its sum; an all-reduce under DDP):
# reading a loss on the host stalls a GPU's queue, so it is done once per this many steps.
SYNC_EVERY = 20


class Task(Protocol):
    """What one model family adds to the loop."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of a batch already on the device (called under autocast)."""
        ...

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per-sample validation outputs of a batch (under autocast and no_grad)."""
        ...

    def score(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics of the whole set's outputs; must include ``val_loss``."""
        ...


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs. ``drop_last`` drops a last partial training batch (BatchNorm
    cannot train on a batch of one); ``oom_hint`` names what to lower on CUDA OOM."""

    epochs: int
    patience: int
    batch_size: int
    seed: int
    desc: str = "train"
    eval_batch_size: int = 0  # 0: twice batch_size
    drop_last: bool = False
    oom_hint: str = "the batch size"


@dataclass
class Choice:
    """The epoch (from 1; 0 before any) where a loss was lowest so far, its weights (on the
    CPU) and its validation outputs. Only a strictly lower loss replaces it: of equal
    losses, the first epoch stays chosen."""

    epoch: int = 0
    loss: float = math.inf
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FitResult:
    """The model with its best weights, and what training measured."""

    model: nn.Module
    state: dict[str, torch.Tensor]  # best weights, on the CPU
    history: list[dict]  # one row per epoch: epoch, train_loss, validation scores, lr
    best_epoch: int
    outputs: dict[str, np.ndarray]  # validation outputs of the best epoch
    seconds: float = 0.0
    speed: dict[str, float] = field(default_factory=dict)  # images/s, peak memory (MB)
    chosen: dict[Hashable, Choice] = field(default_factory=dict)  # per ``choose`` key


def _precision_hint(precision: str) -> str:
    if precision == "fp32":
        return ""
    return f", or train in engine.precision fp32 (now {precision})"


def _check_gradients(model: nn.Module, desc: str, epoch: int, step: int, precision: str) -> None:
    """TrainingError naming the first parameter whose gradient is not finite, if any (a
    finite loss can still give one; the optimizer would turn the weights into NaN)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
        return
    name = next(
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    )
    raise TrainingError(
        f"{desc}: the gradient of {name} is not finite at epoch {epoch}, step {step} "
        f"(the loss was finite): lower the learning rate{_precision_hint(precision)}"
    )


def _check_losses(
    total: float,
    seen: float,
    pending: list[tuple[torch.Tensor, int]],
    step: int,
    epoch: int,
    settings: LoopSettings,
    recipe: Recipe,
    rt: Runtime,
) -> tuple[float, float]:
    """The epoch's running loss x batch size and number of samples (``total``, ``seen``)
    with the steps up to ``step`` added (over every process): one host sync for several
    steps. TrainingError naming the first step whose loss is not finite on any process."""
    k = len(pending)
    sums = all_sum(
        rt, torch.stack([p[0] for p in pending]).tolist() + [float(p[1]) for p in pending]
    )
    # One summation order for the whole epoch: step by step onto the running total, in
    # step order (train_loss, as logged and in history.csv, is total / seen). The values
    # are float32 losses x batch size: their float64 sums are exact, so the same in any
    # order and grouping (math.fsum would add nothing), while an epoch's values span less
    # than about 2**29 / steps (over half a million for 1000 steps).
    for i, (loss_sum, n) in enumerate(zip(sums[:k], sums[k:], strict=True)):
        if not math.isfinite(loss_sum):
            raise TrainingError(
                f"{settings.desc}: the training loss is {loss_sum / n} at epoch {epoch}, "
                f"step {step - k + 1 + i}: lower the learning rate (lr {recipe.lr})"
                + _precision_hint(rt.precision)
            )
        total, seen = total + loss_sum, seen + n
    return total, seen


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _choose(
    epoch: int,
    model: nn.Module,
    outputs: dict[str, np.ndarray],
    offers: list[tuple[Choice, float]],
) -> None:
    """Every choice whose epoch's loss is lower than its own so far takes this epoch, with
    one copy of the weights that they share."""
    better = [(choice, loss) for choice, loss in offers if loss < choice.loss]
    if better:
        state = _cpu_state(model)
        for choice, loss in better:
            choice.epoch, choice.loss, choice.state, choice.outputs = epoch, loss, state, outputs


def _on_device(rt: Runtime, batch: Batch) -> Batch:
    return tuple(rt.to_device(t) for t in batch)


@torch.no_grad()
def predict_all(
    model: nn.Module, task: Task, loader: torch.utils.data.DataLoader, rt: Runtime, n: int
) -> dict[str, np.ndarray]:
    """``task.predict`` over this process's shard of a validation loader, gathered into
    dataset order on every process."""
    model.eval()
    parts: list[dict[str, np.ndarray]] = []
    for batch in loader:
        with rt.autocast():
            parts.append(task.predict(model, _on_device(rt, batch)))
    local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return gather_shards(rt, local, n)


def fit(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    task: Task,
    recipe: Recipe,
    settings: LoopSettings,
    rt: Runtime,
    on_epoch: Callable[[int, dict], None] | None = None,
    choose: Callable[[dict[str, np.ndarray]], dict[Hashable, float]] | None = None,
) -> FitResult:
    """Train ``model`` (already seeded and built) on ``train_set``; keep its best epoch.

    Args:
        recipe: AdamW learning rate and weight decay, and the schedule.
        on_epoch: called on rank 0 with (epoch, the epoch's history row plus its
            throughput: train/eval images per second, peak memory in MB) for MLflow.
        choose: more losses to choose an epoch by, from each epoch's validation outputs
            (key -> loss); per key, the epoch where it was lowest is ``FitResult.chosen``
            (they do not stop training early: only ``val_loss`` does).

    Raises:
        TrainingError: a non-finite training loss, or CUDA out of memory.
    """
    try:
        return _fit(model, train_set, val_set, task, recipe, settings, rt, on_epoch, choose)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"{settings.desc}: CUDA out of memory at batch size {settings.batch_size}: "
            f"lower {settings.oom_hint}"
        ) from None


def _fit(model, train_set, val_set, task, recipe, settings, rt, on_epoch, choose) -> FitResult:
    start = time.perf_counter()
    if rt.device.type == "cuda":  # peak memory of this job, not of the process so far
        torch.cuda.reset_peak_memory_stats(rt.device)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if rt.world > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    sampler = SeededSampler(len(train_set), settings.seed, rt.rank, rt.world)
    shard_size = len(sampler)
    drop_last = settings.drop_last and shard_size > settings.batch_size
    train_loader = make_loader(train_set, settings.batch_size, rt, sampler, drop_last)
    n_val = len(val_set)
    val_loader = make_loader(
        val_set,
        settings.eval_batch_size or 2 * settings.batch_size,
        rt,
        list(range(rt.rank, n_val, rt.world)),
    )
    # fused: one kernel over all parameters instead of a loop of small ones; on a CPU that
    # is 4x less step time (ResNet-50: 150 -> 40 ms), about 10% of a grader's step at 48 px
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True
    )
    scheduler = make_scheduler(optimizer, recipe, settings.epochs, len(train_loader))
    scaler = rt.grad_scaler()

    best = Choice()  # by val_loss
    chosen: dict[Hashable, Choice] = {}  # by each of ``choose``'s losses
    history: list[dict] = []
    speeds: list[dict] = []
    bar = tqdm(
        range(1, settings.epochs + 1), desc=settings.desc, unit="epoch", disable=not rt.is_main
    )
    for epoch in bar:
        sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0.0
        pending: list[tuple[torch.Tensor, int]] = []  # (loss x n, n) of unchecked steps
        last_step = len(train_loader)
        for step, batch in enumerate(train_loader, 1):
            batch = _on_device(rt, batch)
            with rt.autocast():
                loss = task.loss(net, batch)
            pending.append((loss.detach().float() * len(batch[0]), len(batch[0])))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if rt.precision == "bf16" and rt.device.type == "cpu":
                # oneDNN's CPU bf16 convolution backward can return NaN gradients under a
                # finite loss (fp16's scaler skips such steps; elsewhere a NaN gradient
                # shows as a NaN loss one step later)
                _check_gradients(model, settings.desc, epoch, step, rt.precision)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if len(pending) == SYNC_EVERY or step == last_step:
                total, seen = _check_losses(total, seen, pending, step, epoch, settings, recipe, rt)
                pending = []
        t1 = time.perf_counter()
        outputs = predict_all(model, task, val_loader, rt, n_val)
        t2 = time.perf_counter()
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1.0),
            **task.score(outputs),
            "lr": float(optimizer.param_groups[0]["lr"]),
        }
        if not math.isfinite(row["val_loss"]):
            raise TrainingError(
                f"{settings.desc}: the validation loss is {row['val_loss']} at epoch {epoch}: "
                f"lower the learning rate (lr {recipe.lr}) or use precision fp32"
            )
        history.append(row)
        speed = {
            "train_images_per_s": seen / max(t1 - t0, 1e-9),
            "eval_images_per_s": n_val / max(t2 - t1, 1e-9),
            "peak_memory_mb": peak_memory_mb(rt.device),
        }
        speeds.append(speed)
        if on_epoch is not None and rt.is_main:
            on_epoch(epoch, {**row, **speed})
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
        offers = [(best, row["val_loss"])]
        for key, loss in (choose(outputs) if choose else {}).items():
            offers.append((chosen.setdefault(key, Choice()), loss))
        _choose(epoch, model, outputs, offers)
        if best.epoch < epoch and epoch - best.epoch >= settings.patience:
            log.debug("%s: early stop at epoch %d (best %d)", settings.desc, epoch, best.epoch)
            break
    model.load_state_dict(best.state)
    summary = {
        "train_images_per_s": float(np.mean([s["train_images_per_s"] for s in speeds])),
        "eval_images_per_s": float(np.mean([s["eval_images_per_s"] for s in speeds])),
        "peak_memory_mb": max(s["peak_memory_mb"] for s in speeds),
    }
    seconds = time.perf_counter() - start
    return FitResult(model, best.state, history, best.epoch, best.outputs, seconds, summary, chosen)
