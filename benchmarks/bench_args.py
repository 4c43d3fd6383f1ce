"""The command-line options the training benchmarks share (bench_train.py, gpu_check.py):
the engine's device, threads and precisions, and the backbones to run."""

from __future__ import annotations

import argparse

PRECISIONS = ("fp32", "bf16", "fp16")


def add_engine_args(p: argparse.ArgumentParser, device_default: str, device_help: str) -> None:
    """--device, --threads, --precisions and --backbones (read back by :func:`checked`)."""
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=device_default,
        help=f"engine.device: {device_help} (default: {device_default})",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (engine.threads; default: 2)"
    )
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated fp32, bf16, fp16 (default: all three on CUDA, fp32,bf16 on CPU); "
        "a precision the device lacks is skipped and said so",
    )
    p.add_argument(
        "--backbones",
        default=None,
        help="comma-separated timm names (default: train-per-condition.backbones of params.yaml)",
    )


def checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with --precisions and --backbones as lists (None where not given); a bad
    precision is a usage error."""
    args.precisions = _items(args.precisions)
    bad = [s for s in args.precisions or () if s not in PRECISIONS]
    if bad or args.precisions == []:
        p.error(f"--precisions: fp32, bf16 or fp16, got {bad or 'nothing'}")
    args.backbones = _items(args.backbones)
    return args


def default_precisions(cuda: bool) -> list[str]:
    """What runs without --precisions: fp16 only on CUDA (no fast CPU kernels)."""
    return list(PRECISIONS) if cuda else ["fp32", "bf16"]


def _items(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]
