"""GPU smoke check (``make gpu-check``): one fold, one epoch, per precision and backbone.

For each backbone (default: train-per-condition.backbones of params.yaml) and each
precision (fp32, bf16 where the device has it, fp16), train one fold for one epoch with the
graders' real code path, ``training.graders.fit.train_fold``, on a Runtime from
``make_runtime(EngineConfig(device=..., precision=...))``: the engine's loader, autocast,
gradient scaler, validation and best-epoch bookkeeping. The data are the real crops of the
first condition group found in ``--crops`` (``data/crops/<group>.npy`` and ``.csv``, a
random ``--n`` of them), else ``--n`` random uint8 crops 3 x S x S with random labels;
four fifths train, one fifth validate.

Prints a Markdown table: backbone, precision, train and eval images/s (as the loop measures
them: first epoch, so worker start-up and kernel selection included), peak memory in MB
(CUDA: peak allocated, reset per run; CPU: the process's peak resident memory so far) and
whether the training and validation losses are finite. Exits 1 if any run has a
non-finite loss or fails; a precision the device does not have is skipped and said so.

The default ``--device cuda`` fails at once, with the engine's one-line ConfigError and
exit code 1, where torch sees no CUDA GPU; ``--device cpu`` runs the same check on the CPU.

Run: ``make gpu-check``, or e.g. ``python benchmarks/gpu_check.py --device cpu
--precisions fp32,bf16 --backbones resnet50``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_args import add_engine_args, checked, default_precisions

from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.params import load_params
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_per_condition import TrainingConfig, TrainPerConditionConfig
from spinegrade.core.entry import run, setup_logging
from spinegrade.core.errors import ConfigError
from spinegrade.core.runtime import check, check_precision, describe, make_runtime, set_threads
from spinegrade.core.vocab import GROUPS
from spinegrade.training.graders.fit import Split, train_fold

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("spinegrade.gpu_check")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_args(p, "cuda", "cpu runs the check here")
    p.add_argument(
        "--crops",
        type=Path,
        default=ROOT / "data" / "crops",
        help="crop-rois output to read real crops from, if there (default: data/crops)",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="random crops even where real ones exist"
    )
    p.add_argument("--n", type=int, default=160, help="crops used (default: 160)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="side of the random crops in px (default: crop-rois.size_px of params.yaml)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training (default: 0)")
    p.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="params file (default: %(default)s)",
    )
    args = checked(p, p.parse_args(argv))
    if args.n < 10 or args.batch_size < 2:
        p.error("--n must be >= 10 and --batch-size >= 2")
    return args


def load_crops(args: argparse.Namespace, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(crops, labels, description): real crops of the first group found, else random."""
    rng = np.random.default_rng(args.seed)
    if not args.synthetic:
        for group in GROUPS:
            npy, csv = args.crops / f"{group}.npy", args.crops / f"{group}.csv"
            if npy.is_file() and csv.is_file():
                crops = np.load(npy, mmap_mode="r")
                labels = pd.read_csv(csv)["label"].to_numpy()
                rows = np.sort(rng.choice(len(crops), size=min(args.n, len(crops)), replace=False))
                return (
                    np.asarray(crops[rows]),
                    labels[rows].astype(np.int64),
                    f"{len(rows)} real {group} crops from {npy}",
                )
    crops = rng.integers(0, 256, (args.n, 3, size, size), dtype=np.uint8)
    labels = rng.permutation(np.arange(args.n) % 3)
    return crops, labels, f"{args.n} random uint8 crops 3 x {size} x {size}, random labels"


def model_kwargs(recipe: Recipe, size: int, crop_size: int) -> Recipe:
    """The recipe, with a swin's window at its native 7 at 224 px (the params' window fits
    crop-rois.size_px: 3 at 48 px)."""
    kwargs = dict(recipe.model_kwargs)
    if "window_size" in kwargs and size != crop_size and size == 224:
        kwargs["window_size"] = 7
    return Recipe.model_validate({**recipe.model_dump(), "model_kwargs": kwargs})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    failed = False

    def body() -> None:
        nonlocal failed
        # the device first: no GPU where one is asked for is one line and exit 1
        dev = check(EngineConfig(device=args.device))
        set_threads(args.threads)
        if args.params.is_file():
            params = load_params(args.params)
            cfg, crop_size = params.train_per_condition, params.crop_rois.size_px
        else:
            cfg, crop_size = TrainPerConditionConfig(), 48
        backbones = args.backbones or list(cfg.backbones)
        crops, labels, source = load_crops(args, args.size or crop_size)
        size = crops.shape[-1]
        order = np.random.default_rng(args.seed).permutation(len(crops))
        n_val = max(2, len(crops) // 5)
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        # validated anew (model_copy(update=...) would skip validation)
        training = TrainingConfig.model_validate(
            {
                **cfg.training.model_dump(),
                "epochs": 1,
                "patience": 1,
                "batch_size": args.batch_size,
                "folds": (0,),
            }
        )
        rows, errors = [], []
        for backbone in backbones:
            recipe = model_kwargs(cfg.recipes.get(backbone, Recipe()), size, crop_size)
            for precision in args.precisions or default_precisions(dev.type == "cuda"):
                try:
                    check_precision(dev, precision)
                except ConfigError as exc:
                    rows.append((backbone, precision, None, None, None, None, "skipped"))
                    errors.append(f"{backbone} {precision}: skipped: {exc}")
                    continue
                rt = make_runtime(
                    EngineConfig(device=args.device, precision=precision, threads=args.threads)
                )
                if rt.device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(rt.device)
                try:
                    _, res = train_fold(
                        backbone,
                        recipe,
                        training,
                        Split(crops, labels[train_rows], train_rows),
                        Split(crops, labels[val_rows], val_rows),
                        seed=args.seed,
                        desc=f"{backbone}-{precision}",
                        rt=rt,
                    )
                except Exception as exc:  # a smoke check reports every failure, then goes on
                    failed = True
                    rows.append((backbone, precision, None, None, None, None, "no"))
                    errors.append(f"{backbone} {precision}: {type(exc).__name__}: {exc}")
                    continue
                losses = [r[k] for r in res.history for k in ("train_loss", "val_loss")]
                finite = all(math.isfinite(v) for v in losses)
                failed |= not finite
                speed = res.speed
                rows.append(
                    (
                        backbone,
                        precision,
                        speed["train_images_per_s"],
                        speed["eval_images_per_s"],
                        speed["peak_memory_mb"],
                        res.history[-1]["val_loss"],
                        "yes" if finite else "no",
                    )
                )

        info = describe(make_runtime(EngineConfig(device=args.device, threads=args.threads)))
        where = info["device"] + (f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else "")
        memory = "peak allocated, per run" if dev.type == "cuda" else "peak RSS of the process"
        print(
            f"\ndevice: {where}; torch {info['torch']}; CPU {info['cpu']}; torch threads "
            f"{info['torch_threads']}; loader workers {info['loader_workers']}; "
            f"deterministic {info['deterministic']}"
        )
        print(
            f"data: {source}; {len(train_rows)} train / {len(val_rows)} validation; batch "
            f"{args.batch_size}; one epoch; memory: {memory}\n"
        )
        print(
            "| backbone | precision | train images/s | eval images/s | peak memory MB | "
            "val loss | losses finite |"
        )
        print("|---|---|---:|---:|---:|---:|---|")
        for backbone, precision, train_ips, eval_ips, mem, val_loss, finite in rows:
            cells = ["-" if v is None else f"{v:,.1f}" for v in (train_ips, eval_ips, mem)] + [
                "-" if val_loss is None else f"{val_loss:.4f}"
            ]
            print(f"| {backbone} | {precision} | " + " | ".join(cells) + f" | {finite} |")
        for line in errors:
            print(f"\n{line}" if line is errors[0] else line)
        print("\nresult: " + ("FAILED (a loss is not finite, or a run failed)" if failed else "ok"))

    start = time.perf_counter()
    code = run(body)
    if code == 0:
        log.info("gpu-check took %.0f s", time.perf_counter() - start)
    return code or int(failed)


if __name__ == "__main__":
    sys.exit(main())
