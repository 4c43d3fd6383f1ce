"""What the data stages cost at the real dataset's size: wall time, peak memory, disk written.

The real RSNA 2024 download is 1,975 train studies (about 147,000 DICOM files, 35 GB). This
script generates a synthetic dataset of that many studies (the generator runs in parallel,
with a progress bar) and runs the pipeline's data stages on it once, each as its own
subprocess, exactly as dvc.yaml's command for the stage (the same script and arguments,
read from dvc.yaml, plus ``--params`` pointing at a params file written for the run):
synthesize -> ingest -> convert-dicom -> crop-rois -> split-folds. No DVC is involved: the
stages run in a work directory (the current directory of every stage), so their outputs
(data/raw, data/ingest, data/volumes, data/crops, data/folds.csv, reports/*.json) land there.

The params file is the base params (--params, default the repository's params.yaml) with
synthesize.n_train_studies = --studies, synthesize.n_test_studies = --test-studies,
synthesize.workers and convert-dicom.workers = --workers, data.source synthetic and
data.root data/raw (the only root params allow for synthetic data; relative to the work
directory); everything else as in the base file.

What is measured, per stage:

* wall -- ``time.perf_counter`` from starting the subprocess to its exit (Python start-up
  and imports included, about a second or two per stage);
* peak memory -- the highest summed RSS of the stage process and all its children (the
  worker processes), sampled with psutil every 0.2 s in a thread: a sampled peak, so a
  spike shorter than that can be missed; and a sum of RSS counts pages shared between a
  parent and its forked workers once per process, so it errs high;
* disk written -- the allocated size (as ``du`` counts it: blocks, hard links once) of
  the stage's outputs as dvc.yaml lists them (``outs`` and ``metrics``), after it ran;
  synthesize's also counts its DICOM files.

Then the crops' array size per condition group, ``crops x slices x size_px x size_px``
uint8 bytes from the crop counts crop-rois wrote ({group}.csv under data/crops), at the
params' crop shape and at the GPU preset's (presets/gpu-rsna.yaml), with a linear
extrapolation to 1,975 studies when fewer were run. crop-rois holds every group's crops in
memory before writing them, so at the preset's size its peak memory is at least that.

Units: GB = 10**9 bytes; minutes of wall time. The output is Markdown tables on stdout;
the stages' logs and progress bars go to stderr.

Run (small, about a minute on 2 cores):
``python benchmarks/bench_scale.py --studies 6``; the full size (the default):
``python benchmarks/bench_scale.py --out /big/disk/bench_scale``. At full size on 2 AMD
EPYC cores it took 10.9 min, wrote 24.8 GB (115,380 DICOM files and their volumes) and
peaked at 0.64 GB of memory (docs/benchmarks.md: What the real dataset will cost you). A smaller run
prints a linear extrapolation under the table (and says that it is one): likely high on
time, as each stage's start-up is scaled too.

The default work directory is a fresh directory under the system temp dir ($TMPDIR, else
/tmp); the full size needs tens of GB free there (the script prints the free space
first), so point --out at a disk with room. The work directory is deleted at the end
(also after a failure) unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import yaml

from spinegrade.cli.preset import overrides
from spinegrade.core import vocab
from spinegrade.core.config.data import SYNTHETIC_ROOT
from spinegrade.core.config.params import load_params
from spinegrade.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("synthesize", "ingest", "convert-dicom", "crop-rois", "split-folds")
REAL_STUDIES = 1975
REAL_DICOMS = 147_000  # about, in the real download
REAL_GB = 35
GB = 1e9
POLL_S = 0.2
TAIL_LINES = 25


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--studies",
        type=int,
        default=REAL_STUDIES,
        help="synthetic train studies (synthesize.n_train_studies; default: %(default)s, "
        "the real download's count)",
    )
    p.add_argument(
        "--test-studies",
        type=int,
        default=None,
        help="synthetic held-out test studies (default: the base params' "
        "synthesize.n_test_studies)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for synthesize and convert-dicom (synthesize.workers, "
        "convert-dicom.workers; default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="work directory; must be empty or not exist (default: a fresh bench_scale.* "
        "directory under $TMPDIR or /tmp)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the work directory (default: delete it)"
    )
    p.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="base params file (default: the repository's params.yaml)",
    )
    p.add_argument(
        "--preset",
        type=Path,
        default=ROOT / "presets" / "gpu-rsna.yaml",
        help="preset whose crop-rois.slices and size_px the crop sizes are also given at "
        "(default: presets/gpu-rsna.yaml)",
    )
    args = p.parse_args()
    if args.studies < 1:
        p.error("--studies must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.test_studies is not None and args.test_studies < 0:
        p.error("--test-studies must be 0 or more")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {args.out} is not empty (it is deleted at the end unless --keep)")
    return args


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Stage:
    """One data stage as dvc.yaml runs it: argv (absolute script, own interpreter) and the
    output paths it writes (relative to the work directory)."""

    name: str
    argv: list[str]
    outputs: list[str]


def dvc_stages(params_file: Path) -> list[Stage]:
    """The data stages' commands and outputs from dvc.yaml, with ``--params params_file``."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name in STAGES:
        spec = stages[name]
        cmd = shlex.split(spec["cmd"])
        if cmd[0] != "python" or "${" in spec["cmd"]:
            raise SystemExit(f"dvc.yaml: stage {name}: cannot run its cmd here: {spec['cmd']!r}")
        argv = [sys.executable, str(ROOT / cmd[1]), *cmd[2:], "--params", str(params_file)]
        paths = [
            p if isinstance(p, str) else next(iter(p))
            for key in ("outs", "metrics")
            for p in spec.get(key, [])
        ]
        out.append(Stage(name, argv, paths))
    return out


def write_params(base: Path, work: Path, studies: int, test: int | None, workers: int) -> Path:
    """The base params with the run's dataset size and workers, written into ``work``."""
    raw = yaml.safe_load(base.read_text()) or {}
    raw.setdefault("data", {}).update(source="synthetic", root=SYNTHETIC_ROOT)
    syn = raw.setdefault("synthesize", {})
    syn["n_train_studies"] = studies
    if test is not None:
        syn["n_test_studies"] = test
    syn["workers"] = workers
    raw.setdefault("convert-dicom", {})["workers"] = workers
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)  # fail here, not in the first stage, if the result is invalid
    return path


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    """One stage's measurements."""

    name: str
    seconds: float = 0.0
    returncode: int = 0
    peak_rss: int = 0
    disk: int = 0
    files: int = 0
    dicoms: int = 0
    notes: str = ""
    tail: list[str] = field(default_factory=list)


class PeakRss(threading.Thread):
    """Samples the summed RSS of a process and all its descendants every POLL_S seconds."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            total = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._done.wait(POLL_S)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def forward(stream, tail: deque) -> None:
    """Copy a stage's output to our stderr as it comes (progress bars' carriage returns
    too), keeping its last bytes for an error message."""
    while chunk := stream.read1(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail.append(chunk)


def run_stage(stage: Stage, work: Path) -> Result:
    """Run one stage in ``work``; its wall time, sampled peak RSS and output size."""
    print(f"\n=== {stage.name}: {shlex.join(stage.argv)}", file=sys.stderr, flush=True)
    tail: deque[bytes] = deque(maxlen=64)
    t0 = time.perf_counter()
    proc = subprocess.Popen(stage.argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = PeakRss(proc.pid)
    sampler.start()
    reader = threading.Thread(target=forward, args=(proc.stdout, tail), daemon=True)
    reader.start()
    code = proc.wait()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    reader.join()
    result = Result(stage.name, seconds, code, peak)
    if code != 0:
        text = b"".join(tail).decode(errors="replace").replace("\r", "\n")
        result.tail = [line for line in text.splitlines() if line.strip()][-TAIL_LINES:]
        return result
    for rel in stage.outputs:
        size, files, dicoms = disk_usage(work / rel)
        result.disk += size
        result.files += files
        result.dicoms += dicoms
    return result


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(allocated bytes as ``du`` counts them, files, .dcm files) under ``path``."""
    if not path.exists():
        return 0, 0, 0
    seen: set[tuple[int, int]] = set()
    size = files = dicoms = 0

    def add(p: str) -> None:
        nonlocal size
        st = os.lstat(p)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512

    add(str(path))
    for dirpath, dirnames, filenames in os.walk(path):
        for d in dirnames:
            add(os.path.join(dirpath, d))
        for f in filenames:
            add(os.path.join(dirpath, f))
            files += 1
            dicoms += f.endswith(".dcm")
    return size, files, dicoms


# --------------------------------------------------------------------------- notes


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def crop_counts(work: Path) -> dict[str, int]:
    """Crops per condition group, from crop-rois' report."""
    groups = read_json(work / "reports" / "crop-rois.json").get("groups", {})
    return {g: int(groups.get(g, {}).get("crops", 0)) for g in vocab.GROUPS}


def stage_notes(r: Result, work: Path) -> str:
    """What the stage produced, in a few words, from its outputs and report."""
    if r.name == "synthesize":
        return f"{r.dicoms:,} DICOM files"
    if r.name == "ingest":
        rep = read_json(work / "reports" / "ingest.json")
        studies = rep.get("studies", {})
        labels = len(pd.read_csv(work / "data" / "ingest" / "labels.csv", usecols=[0]))
        return (
            f"{studies.get('train', '?')} train + {studies.get('test', '?')} test studies, "
            f"{labels:,} label rows"
        )
    if r.name == "convert-dicom":
        rep = read_json(work / "reports" / "convert-dicom.json")
        return (
            f"{rep.get('series_converted', '?')} series, {rep.get('stacks', '?')} volumes, "
            f"{rep.get('slices', 0):,} slices"
        )
    if r.name == "crop-rois":
        counts = crop_counts(work)
        return (
            f"{sum(counts.values()):,} crops ("
            + ", ".join(f"{g} {n:,}" for g, n in counts.items())
            + ")"
        )
    if r.name == "split-folds":
        rep = read_json(work / "reports" / "split-folds.json")
        return f"{len(rep)} folds"
    return ""


# --------------------------------------------------------------------------- report


def crop_shapes(params_file: Path, preset: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """(slices, size_px) of the run's crop-rois, and with the GPU preset applied to it (read
    and checked as `make exp-gpu` reads it)."""
    base = load_params(params_file).crop_rois
    changed = overrides(preset, params_file)
    gpu = (
        changed.get("crop-rois.slices", base.slices),
        changed.get("crop-rois.size_px", base.size_px),
    )
    return (base.slices, base.size_px), gpu


def print_stage_table(results: list[Result], studies: int, test: int) -> None:
    print("| stage | wall (min) | peak memory (GB) | disk written (GB) | notes |")
    print("|---|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r.name} | {r.seconds / 60:.2f} | {r.peak_rss / GB:.2f} | {r.disk / GB:.3f} | "
            f"{r.notes} |"
        )
    wall = sum(r.seconds for r in results)
    disk = sum(r.disk for r in results)
    peak = max(r.peak_rss for r in results)
    print(f"| **total** | {wall / 60:.2f} | {peak / GB:.2f} (max) | {disk / GB:.3f} | |")
    if studies != REAL_STUDIES:
        k = (REAL_STUDIES + test) / (studies + test)
        print(
            f"\nLinear extrapolation to {REAL_STUDIES:,} train + {test} test studies (x{k:.1f}; "
            f"an extrapolation, not a measurement; each stage's start-up is scaled too): wall "
            f"about {wall * k / 3600:.1f} h, disk about {disk * k / GB:.0f} GB, about "
            f"{round(results[0].dicoms * k, -3):,.0f} DICOM files (the real download: about "
            f"{REAL_DICOMS:,} files, {REAL_GB} GB)."
        )


def print_crop_table(work: Path, params_file: Path, preset: Path, studies: int) -> None:
    counts = crop_counts(work)
    demo, gpu = crop_shapes(params_file, preset)
    scale = REAL_STUDIES / studies
    bytes_demo = {g: n * demo[0] * demo[1] ** 2 for g, n in counts.items()}
    bytes_gpu = {g: n * gpu[0] * gpu[1] ** 2 for g, n in counts.items()}
    print(
        f"\nCrop arrays (uint8, crops x slices x size x size), at the params' crop shape "
        f"({demo[0]} x {demo[1]} x {demo[1]}) and at {preset.name}'s ({gpu[0]} x {gpu[1]} x "
        f"{gpu[1]}); crop-rois holds them all in memory before writing:\n"
    )
    extra = studies != REAL_STUDIES
    head = "| group | crops | params' shape (GB) | GPU preset (GB) |"
    rule = "|---|---:|---:|---:|"
    if extra:
        head += f" GPU preset at {REAL_STUDIES:,} studies (GB, extrapolated) |"
        rule += "---:|"
    print(head)
    print(rule)
    for g, n in counts.items():
        row = f"| {g} | {n:,} | {bytes_demo[g] / GB:.3f} | {bytes_gpu[g] / GB:.3f} |"
        if extra:
            row += f" {bytes_gpu[g] * scale / GB:.2f} |"
        print(row)
    total = (
        f"| **total** | {sum(counts.values()):,} | {sum(bytes_demo.values()) / GB:.3f} | "
        f"{sum(bytes_gpu.values()) / GB:.3f} |"
    )
    if extra:
        total += f" {sum(bytes_gpu.values()) * scale / GB:.2f} |"
    print(total)


def machine_line(work: Path) -> str:
    from spinegrade.core.runtime import cpu_name  # imports torch: only once, at the end

    ram = psutil.virtual_memory().total
    return (
        f"machine: {cpu_name()}, {os.cpu_count()} cores (os.cpu_count), {ram / GB:.1f} GB RAM, "
        f"{platform.platform()}, Python {platform.python_version()}; "
        f"{shutil.disk_usage(work).free / GB:.0f} GB free at the work directory"
    )


def main() -> int:
    args = parse_args()
    try:
        base = load_params(args.params)
    except ConfigError as exc:
        raise SystemExit(f"bench_scale: {exc}") from None
    test = args.test_studies if args.test_studies is not None else base.synthesize.n_test_studies
    if args.out is None:
        work = Path(tempfile.mkdtemp(prefix="bench_scale."))
    else:
        work = args.out.resolve()
        work.mkdir(parents=True, exist_ok=True)
    print(
        f"work directory {work} ({shutil.disk_usage(work).free / GB:.0f} GB free); "
        f"{args.studies} train + {test} test studies, {args.workers} workers",
        file=sys.stderr,
        flush=True,
    )
    results: list[Result] = []
    try:
        params_file = write_params(args.params, work, args.studies, test, args.workers)
        for stage in dvc_stages(params_file):
            r = run_stage(stage, work)
            if r.returncode != 0:
                print(
                    f"\nbench_scale: stage {r.name} failed (exit status {r.returncode}) after "
                    f"{r.seconds:.0f} s; "
                    f"its last output lines:\n  " + "\n  ".join(r.tail),
                    file=sys.stderr,
                )
                return 1
            r.notes = stage_notes(r, work)
            results.append(r)
        print(
            f"\n{args.studies:,} synthetic train + {test} test studies, {args.workers} workers, "
            f"params {args.params} (base); peak memory = sampled (every {POLL_S} s) summed RSS "
            "of the stage and its children; disk = allocated size of its outputs\n"
        )
        print_stage_table(results, args.studies, test)
        print_crop_table(work, params_file, args.preset, args.studies)
        print(f"\n{machine_line(work)}")
        return 0
    finally:
        if args.keep:
            print(f"\nkept the work directory {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
