"""Benchmark the training engine: the data loader alone, the training step alone, their ratio.

What is measured, per crop size (default: the demo's 48 px and 224 px) and backbone:

* loader -- images/s of the engine's real input path alone: synthetic random uint8 crops
  (3 x S x S) memory-mapped from a temporary .npy (``np.load(mmap_mode="r")``, as the
  train-per-condition stage reads them), ``CropDataset`` with the graders' augmentation
  (``build_augmentation``) and per-crop standardization, ``SeededSampler`` and
  ``make_loader`` (persistent workers, pinned memory on CUDA), with 0, 1 and 2 workers and
  the engine's default worker count on this device (``make_runtime(EngineConfig())``).
  A few warm-up batches (worker start-up) are not timed; then ``--loader-batches`` batches
  are (over several epochs when the temporary file holds fewer crops). The loader does not
  depend on the backbone, so it is measured once per size;
* step -- images/s of the training step alone, on one pre-made batch already on the
  device: forward under ``Runtime.autocast``, the graders' loss, reading the loss back
  (the loop does so every step: a device sync on CUDA), backward and an AdamW step through
  the runtime's gradient scaler, with the engine's settings (deterministic kernels,
  channels-last on CUDA). Precisions fp32 and, where ``check_precision`` allows them, bf16
  (and fp16 on CUDA); an unsupported one prints n/a;
* loader/step -- the loader's rate with the default workers over the step's rate. The goal
  is loader/step >= 3: the step, not the loader, is then the bottleneck. On CPU the loader
  and the step share the cores in a real run, so there the ratio measured apart is an
  upper bound;
* on CUDA at 224 px, also our step rate over timm's published training throughput for the
  same model and precision (see ``TIMM_TRAIN_224``; n/a where timm publishes none).

Backbones and their model arguments come from params.yaml (train-per-condition); the
recipes' swin ``window_size`` fits the crop size (crop-rois.size_px), and at 224 px the
model's native window 7 is used. Wall-clock seconds from ``time.perf_counter`` (after a
``torch.cuda.synchronize`` on CUDA). Temporary files are removed at the end.

Run: ``make bench-train`` (= ``python benchmarks/bench_train.py``), or e.g.
``python benchmarks/bench_train.py --quick``, ``--sizes 48 --backbones resnet50``,
``--device cuda --batch-size-large 16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from bench_args import add_engine_args, checked, default_precisions

from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.params import load_params
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.errors import ConfigError
from spinegrade.core.runtime import (
    Runtime,
    check_precision,
    cpu_name,
    describe,
    make_runtime,
    seed_everything,
    set_threads,
)
from spinegrade.models.backbones import create_backbone
from spinegrade.models.inputs import CropDataset
from spinegrade.training.engine.augment import build_augmentation
from spinegrade.training.engine.loader import SeededSampler, make_loader
from spinegrade.training.graders.losses import make_loss

ROOT = Path(__file__).resolve().parents[1]
GOAL = 3.0  # loader/step at or above this: the step is the bottleneck
MAX_FILE_BYTES = 256 * 2**20  # the temporary crop file is at most this big
IN_CHANS = 3

# timm's published training throughput at 224 px (samples/s, and the batch size it ran),
# from huggingface/pytorch-image-models, results/benchmark-train-amp-nchw-pt112-cu113-
# rtx3090.csv and results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: timm's
# benchmark.py --bench train --amp (fp16 autocast, SGD, 3 input channels, 1000 classes,
# channels-first / channels-last), PyTorch 1.12, CUDA 11.3, one RTX 3090. These are the
# only training CSVs we found there: no bf16 or fp32 training numbers (and no RTX 4090
# training CSV), so those print n/a rather than a number. Our step differs (batch 32,
# AdamW, 3 outputs, a loss read-back every step, another GPU): read the ratio as a rough
# check that the engine adds no large overhead, not as a like-for-like comparison.
TIMM_TRAIN_224: dict[tuple[str, str, str], tuple[float, int]] = {
    ("resnet50", "fp16", "nchw"): (826.06, 512),
    ("resnet50", "fp16", "nhwc"): (1218.01, 512),
    ("convnext_tiny", "fp16", "nchw"): (813.16, 256),
    ("convnext_tiny", "fp16", "nhwc"): (819.24, 256),
    ("swin_tiny_patch4_window7_224", "fp16", "nchw"): (646.76, 256),
    ("swin_tiny_patch4_window7_224", "fp16", "nhwc"): (648.69, 256),
}
TIMM_GPU = "RTX 3090"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="The module docstring (benchmarks/bench_train.py) describes what is measured.",
    )
    add_engine_args(p, "auto", "auto is CUDA when visible, else CPU")
    p.add_argument(
        "--sizes", default="48,224", help="comma-separated crop sides in px (default: 48,224)"
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="batch size at sizes up to 64 px (default: 32)"
    )
    p.add_argument(
        "--batch-size-large",
        type=int,
        default=32,
        help="batch size at sizes above 64 px (default: 32; lower it if a GPU runs out of memory)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per row (default: CPU 10 up to 64 px and 3 above; "
        "CUDA 50 and 20; --quick 2 and 1)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="untimed training steps first (default: CPU 2, CUDA 10; --quick 1)",
    )
    p.add_argument(
        "--loader-batches",
        type=int,
        default=None,
        help="timed loader batches per worker count (default: 200 up to 64 px, 60 above; "
        "--quick 30 and 10), after 5 untimed ones",
    )
    p.add_argument(
        "--workers",
        default="0,1,2",
        help="comma-separated loader worker counts; the engine's default is added (default: 0,1,2)",
    )
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=EngineConfig().deterministic,
        help="engine.deterministic: deterministic kernels, no cuDNN autotuning (default: on, "
        "as the stages run)",
    )
    p.add_argument("--quick", action="store_true", help="a fast run: few steps and batches")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and weights (default: 0)")
    args = checked(p, p.parse_args())
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--sizes and --workers take comma-separated integers")
    if not args.sizes or min(args.sizes) < 32:
        p.error("--sizes: crop sides of at least 32 px")
    if any(w < 0 for w in args.workers):
        p.error("--workers: counts must be >= 0")
    return args


def train_config() -> tuple[TrainPerConditionConfig, int]:
    """train-per-condition params and the crop size of params.yaml (defaults without it)."""
    params = ROOT / "params.yaml"
    if params.is_file():
        loaded = load_params(params)
        return loaded.train_per_condition, loaded.crop_rois.size_px
    return TrainPerConditionConfig(), 48


def model_kwargs(cfg: TrainPerConditionConfig, backbone: str, size: int, crop_size: int) -> dict:
    """The recipe's timm arguments; at 224 px a swin's window is its native 7 (the recipe's
    window fits crop-rois.size_px: 3 at 48 px)."""
    kwargs = dict(cfg.recipes[backbone].model_kwargs) if backbone in cfg.recipes else {}
    if "window_size" in kwargs and size != crop_size and size == 224:
        kwargs["window_size"] = 7
    return kwargs


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- loader


def write_crops(path: Path, n: int, size: int, seed: int) -> None:
    """``n`` random uint8 crops (n, 3, size, size) saved as a .npy, in chunks."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(n, IN_CHANS, size, size)
    )
    for i in range(0, n, 256):
        out[i : i + 256] = rng.integers(0, 256, out[i : i + 256].shape, dtype=np.uint8)
    out.flush()
    del out


def crop_dataset(path: Path, seed: int) -> CropDataset:
    """The graders' training dataset over the memory-mapped crops (random labels)."""
    crops = np.load(path, mmap_mode="r")
    labels = np.random.default_rng(seed).integers(0, 3, len(crops))
    return CropDataset(crops, labels, None, None, build_augmentation(seed))


def epochs_of(loader: torch.utils.data.DataLoader, sampler: SeededSampler) -> Iterator:
    """Batches of epoch 1, 2, ... without end (persistent workers carry over)."""
    epoch = 0
    while True:
        epoch += 1
        sampler.set_epoch(epoch)
        yield from loader


def bench_loader(
    path: Path, batch: int, rt: Runtime, workers: int, batches: int, warmup: int, seed: int
) -> float:
    """Images/s of the training loader with ``workers`` workers."""
    dataset = crop_dataset(path, seed)
    sampler = SeededSampler(len(dataset), seed, rt.rank, rt.world)
    loader = make_loader(dataset, batch, dataclasses.replace(rt, workers=workers), sampler, True)
    it = epochs_of(loader, sampler)
    for _ in range(warmup):
        next(it)
    images = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        images += len(x)
    seconds = time.perf_counter() - t0
    it.close()
    del it, loader  # shuts the persistent workers down
    gc.collect()
    return images / seconds


def first_batch(path: Path, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented, standardized training batch (on the CPU)."""
    dataset = crop_dataset(path, seed)
    sampler = SeededSampler(len(dataset), seed)
    sampler.set_epoch(1)
    cpu = Runtime(torch.device("cpu"))
    return next(iter(make_loader(dataset, batch, cpu, sampler, True)))


# --------------------------------------------------------------------------- step


def bench_step(
    backbone: str,
    kwargs: dict,
    cfg: TrainPerConditionConfig,
    rt: Runtime,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    warmup: int,
    seed: int,
) -> float:
    """Images/s of the training step on a batch already on the device."""
    seed_everything(seed, rt.deterministic)
    size = batch[0].shape[-1]
    recipe = cfg.recipes.get(backbone)
    lr, wd = (recipe.lr, recipe.weight_decay) if recipe else (1e-3, 0.01)
    model = create_backbone(backbone, IN_CHANS, size, kwargs).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    criterion = make_loss(cfg.training).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=True)
    scaler = rt.grad_scaler()
    x, y = rt.to_device(batch[0]), rt.to_device(batch[1])

    def step() -> None:
        with rt.autocast():
            loss = criterion(model(x), y)
        float(loss.detach())  # as the loop: it reads every step's loss (a sync on CUDA)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(rt.device)
    return steps * len(x) / (time.perf_counter() - t0)


def free_memory(dev: torch.device) -> None:
    """Let the last model's memory go before the next one is built."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- report


def fmt_rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def verdict(ratio: float) -> str:
    if ratio >= GOAL:
        return "step (goal met)"
    return "step, < 3x margin" if ratio >= 1 else "loader"


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*deterministic.*")  # warn_only kernels
    cfg, crop_size = train_config()
    backbones = args.backbones or list(cfg.backbones)
    try:
        base = make_runtime(
            EngineConfig(device=args.device, threads=args.threads, deterministic=args.deterministic)
        )
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    cuda = base.device.type == "cuda"
    default_workers = base.workers
    workers = sorted({*args.workers, default_workers})
    precisions = args.precisions or default_precisions(cuda)
    unsupported: dict[str, str] = {}
    for p in precisions:
        try:
            check_precision(base.device, p)
        except ConfigError as exc:
            unsupported[p] = str(exc)

    def steps_for(size: int) -> tuple[int, int]:
        small = size <= 64
        if args.quick:
            steps, warm = (2 if small else 1), 1
        elif cuda:
            steps, warm = (50 if small else 20), 10
        else:
            steps, warm = (10 if small else 3), 2
        return (args.steps or steps), (warm if args.warmup_steps is None else args.warmup_steps)

    def loader_batches(size: int) -> int:
        if args.loader_batches:
            return args.loader_batches
        return (30 if size <= 64 else 10) if args.quick else (200 if size <= 64 else 60)

    loader_rows: list[tuple[int, int, int, float]] = []
    step_rows: list[tuple[str, int, int, str, float | None, float]] = []
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_train."))
    start = time.perf_counter()
    try:
        for size in args.sizes:
            bs = args.batch_size if size <= 64 else args.batch_size_large
            n_batches, warm_batches = loader_batches(size), 5
            crop_bytes = IN_CHANS * size * size
            n = min(bs * (n_batches + warm_batches), MAX_FILE_BYTES // crop_bytes)
            n = max(n, 4 * bs)
            path = tmp / f"crops_{size}.npy"
            progress(f"{size} px: writing {n} random crops ({n * crop_bytes / 1e6:.0f} MB) ...")
            write_crops(path, n, size, args.seed)
            rates = {}
            for w in workers:
                progress(f"{size} px: loader, {w} worker(s), {n_batches} batches of {bs} ...")
                rates[w] = bench_loader(path, bs, base, w, n_batches, warm_batches, args.seed)
                loader_rows.append((size, bs, w, rates[w]))
            batch = first_batch(path, bs, args.seed)
            steps, warm = steps_for(size)
            for backbone in backbones:
                kwargs = model_kwargs(cfg, backbone, size, crop_size)
                for p in precisions:
                    if p in unsupported:
                        step_rows.append((backbone, size, bs, p, None, rates[default_workers]))
                        continue
                    progress(f"{size} px: {backbone} {p}, {warm} + {steps} steps ...")
                    rt = dataclasses.replace(base, precision=p)
                    try:
                        rate = bench_step(backbone, kwargs, cfg, rt, batch, steps, warm, args.seed)
                    except torch.OutOfMemoryError:
                        progress(f"{backbone} {p} at {size} px: out of memory (lower the batch)")
                        rate = None
                    free_memory(rt.device)
                    step_rows.append((backbone, size, bs, p, rate, rates[default_workers]))
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - start

    info = describe(base)
    print(
        f"\nmachine: {platform.platform()}, {cpu_name()}, os.cpu_count()={os.cpu_count()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"load average {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after (1 min)"
    )
    if load_before > max(1.0, 0.5 * (os.cpu_count() or 1)):
        print(
            "warning: other processes were using the CPU when the run started: the CPU "
            "numbers (the loader's everywhere, the step's on CPU) may be far too low"
        )
    device = info["device"] + (f" ({info['gpu']}, CUDA {info['cuda']})" if cuda else "")
    print(
        f"device: {device}; torch threads {torch.get_num_threads()}; deterministic "
        f"{base.deterministic}; channels-last {base.channels_last}; default loader workers "
        f"{default_workers} (make_runtime(EngineConfig()) on this device)"
    )
    print(
        "data: synthetic random uint8 crops (3 x S x S) memory-mapped from a temporary .npy; "
        "CropDataset with augmentation, per-crop standardization; SeededSampler + make_loader"
    )
    print(f"wall clock: {total:.0f} s\n")

    print("| size px | batch | loader workers | loader images/s |")
    print("|---:|---:|---:|---:|")
    for size, bs, w, rate in loader_rows:
        mark = " (default)" if w == default_workers else ""
        print(f"| {size} | {bs} | {w}{mark} | {rate:,.0f} |")

    timm_cols = cuda and any(r[1] == 224 for r in step_rows)
    layout = "nhwc" if base.channels_last else "nchw"
    head = "| backbone | size px | batch | precision | step images/s | loader/step | bottleneck |"
    rule = "|---|---:|---:|---|---:|---:|---|"
    if timm_cols:
        head += f" timm {TIMM_GPU} images/s ({layout}, batch) | ours/timm |"
        rule += "---:|---:|"
    print(f"\n{head}\n{rule}")
    for backbone, size, bs, p, rate, loader_rate in step_rows:
        if rate is None:
            cells = ["n/a", "n/a", "n/a"]
        else:
            ratio = loader_rate / rate
            cells = [fmt_rate(rate), f"{ratio:.1f}", verdict(ratio)]
        if timm_cols:
            ref = TIMM_TRAIN_224.get((backbone, p, layout)) if size == 224 else None
            if ref is None or rate is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [f"{ref[0]:,.0f} (batch {ref[1]})", f"{rate / ref[0]:.2f}"]
        print(f"| {backbone} | {size} | {bs} | {p} | " + " | ".join(cells) + " |")

    measured = [r for r in step_rows if r[4] is not None]
    met = sum(1 for r in measured if r[5] / r[4] >= GOAL)
    print(
        f"\ngoal: loader/step >= {GOAL:g} (loader with the default {default_workers} worker(s)), "
        f"i.e. the step, not the loader, is the bottleneck: met in {met} of {len(measured)} rows"
    )
    for p, why in unsupported.items():
        print(f"{p}: n/a, {why}")
    if not cuda:
        print(
            "on CPU the loader and the step share the cores in a real run: the ratio measured "
            "apart is an upper bound. timm's published numbers are GPU numbers: compared on "
            "CUDA only."
        )


if __name__ == "__main__":
    main()
