"""Benchmark convert-dicom against the naive per-file DICOM -> PNG baseline.

What is measured, on exactly the same files (every DICOM file of the series ingest marks
``needed``):

* baseline -- what the RSNA 2024 write-ups did: one file at a time, ``pydicom.dcmread``,
  ``pixel_array``, min-max scale to 8 bits, write a PNG with PIL (sequential);
* pydicom read -- ``pydicom.dcmread`` and ``pixel_array`` per file and nothing else (no
  geometry, no output): the rate convert_all's reading is measured against;
* convert_all -- spinegrade's convert-dicom (position-sorted .npy stacks plus geometry),
  once per ``--workers`` value (process start-up included).

Wall-clock seconds come from ``time.perf_counter``; with ``--repeat N`` the methods take
turns (one run of each per round, so a change in the machine's load hits all of them) and
the best of N runs is reported. A method's previous output is deleted before its clock
starts. The OS page cache is never dropped (that needs root): by default every file is read
once before timing so all methods see a warm cache; ``--warmup`` additionally runs each
method once, untimed, before the timed rounds. All outputs go to a temporary directory that
is removed at the end.

Run: ``make bench`` (= ``python benchmarks/bench_convert.py``), or e.g.
``python benchmarks/bench_convert.py --studies 10 --workers 1,2 --repeat 3``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from spinegrade.core.config.params import load_params
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.data.convert import convert_all
from spinegrade.data.ingest import ingest
from spinegrade.synthetic.dataset import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="existing RSNA-layout dataset (default: data/raw if it exists and "
        "--studies is not given; else a synthetic dataset is generated)",
    )
    p.add_argument(
        "--studies",
        type=int,
        default=None,
        help="generate a synthetic dataset of this many train studies (default: 20; "
        "image sizes from params.yaml)",
    )
    p.add_argument(
        "--workers", default="1,2", help="comma-separated convert_all worker counts (default: 1,2)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="timed runs per method, best reported (default: 1)"
    )
    p.add_argument(
        "--warmup", action="store_true", help="run every method once, untimed, before timing it"
    )
    args = p.parse_args()
    if args.data is not None and args.studies is not None:
        p.error("give --data or --studies, not both")
    if args.data is None and args.studies is None and (ROOT / "data" / "raw").is_dir():
        args.data = ROOT / "data" / "raw"
    return args


def synthetic_config(studies: int) -> SyntheticConfig:
    params = ROOT / "params.yaml"
    cfg = load_params(params).synthesize if params.is_file() else SyntheticConfig()
    # validated anew: model_copy(update=...) would skip validation
    return SyntheticConfig.model_validate(
        {**cfg.model_dump(), "n_train_studies": studies, "n_test_studies": 0}
    )


def baseline(files: list[Path], out: Path) -> int:
    """The naive per-file baseline: dcmread -> pixel_array -> 8-bit min-max -> PNG."""
    for i, f in enumerate(files):
        px = pydicom.dcmread(f).pixel_array.astype(np.float32)
        lo, hi = float(px.min()), float(px.max())
        img = ((px - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(px)).astype(np.uint8)
        Image.fromarray(img).save(out / f"{i}.png")
    return len(files)


def read_only(files: list[Path]) -> int:
    """pydicom's own rate: dcmread -> pixel_array per file, nothing kept or written."""
    for f in files:
        _ = pydicom.dcmread(f).pixel_array
    return len(files)


def timed(
    methods: list[tuple[Path | None, Callable[[], int]]], repeat: int, warmup: bool
) -> list[tuple[int, float]]:
    """(slices, best seconds) per ``(output, run)`` method over ``repeat`` rounds of one run
    each, after one untimed round if ``warmup``; ``output`` is deleted before each run."""
    best = [(0, float("inf"))] * len(methods)
    untimed = 1 if warmup else 0
    for round_ in range(untimed + repeat):
        for i, (out, run) in enumerate(methods):
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            slices = run()
            seconds = time.perf_counter() - t0
            if round_ >= untimed:
                best[i] = (slices, min(best[i][1], seconds))
    return best


def main() -> None:
    args = parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert."))
    try:
        if args.data is not None:
            root, source = args.data, f"dataset {args.data}"
        else:
            args.studies = args.studies or 20
            cfg = synthetic_config(args.studies)
            print(f"generating {args.studies} synthetic train studies in {tmp} ...", flush=True)
            root = generate_dataset(cfg, tmp / "raw")
            source = (
                f"synthetic, {args.studies} train studies, sagittal sizes "
                f"{list(cfg.sagittal_sizes)}, axial sizes {list(cfg.axial_sizes)}"
            )
        series = ingest(root).series
        needed = series[series["needed"].astype(bool)]
        files = [
            f
            for r in needed.itertuples(index=False)
            for f in sorted(
                (root / f"{r.split}_images" / str(r.study_id) / str(r.series_id)).glob("*.dcm")
            )
        ]
        mb = sum(f.stat().st_size for f in files) / 1e6
        for f in files:  # warm the page cache so every method reads from memory
            f.read_bytes()

        def run_baseline() -> int:
            (tmp / "png").mkdir()
            return baseline(files, tmp / "png")

        def run_convert(w: int) -> Callable[[], int]:
            return lambda: convert_all(series, root, tmp / f"npy_w{w}", workers=w)["slices"]

        names = [("baseline (dcmread+PNG)", 1), ("pydicom read (dcmread+pixel_array)", 1)]
        methods = [(tmp / "png", run_baseline), (None, lambda: read_only(files))]
        for w in workers:
            names.append(("convert_all (.npy)", w))
            methods.append((tmp / f"npy_w{w}", run_convert(w)))
        rows = [
            (*name, *result)
            for name, result in zip(names, timed(methods, args.repeat, args.warmup), strict=True)
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nmachine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f} (1 min)"
    )
    print(f"data: {source}; {len(needed)} needed series, {len(files)} DICOM files, {mb:.1f} MB")
    warm = (
        "plus one untimed round of every method"
        if args.warmup
        else "no untimed runs (pass --warmup for one)"
    )
    print(
        f"cache: warm (all files read once before timing; page cache not dropped), {warm}; "
        f"best of {args.repeat} interleaved run(s)\n"
    )
    base, read = rows[0][3], rows[1][3]
    print(
        "| method | workers | slices | seconds | slices/s | speed-up vs baseline "
        "| share of pydicom read's rate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, w, n, sec in rows:
        print(
            f"| {name} | {w} | {n} | {sec:.2f} | {n / sec:.1f} | {base / sec:.2f}x "
            f"| {read / sec:.0%} |"
        )


if __name__ == "__main__":
    main()
