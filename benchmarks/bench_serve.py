"""Benchmark ``spinegrade serve`` under concurrent clients against ``spinegrade predict``'s
batch rate over the same studies (issue 25, item 7).

Everything runs in a DVC workspace that has finished ``make repro`` (--workspace, default
the current directory): its models/, localizers/, data/compare-backbones/choice.json,
data/ingest/labels.csv and params.yaml, and the synthetic test studies
(data/raw/test_images, listed by data/raw/test_series_descriptions.csv). What is measured,
in this order, each step alone on the machine:

* predict, cold -- wall clock (``time.perf_counter``) of the command ``python -m
  spinegrade.cli.main predict --images ... --series ... --out <tmp>.csv`` (= ``spinegrade
  predict``; Python start-up, imports and model load included) over all the test studies,
  and again over the first study only (a series CSV of its rows);
* predict, warm -- in this process: ``load_bundle`` once (BundleFiles of the workspace,
  params.yaml's sections, its engine.threads), one untimed study, then ``predict_studies``
  over all the test studies, timed, --warm-repeats passes; all of this once before the
  service starts and again after it has stopped, so that a machine that speeds up or
  slows down over the run (seen here: 10% within minutes) weighs on both sides. The
  median of all those passes, as seconds per study and studies per minute, is predict's
  batch rate;
* the service -- ``python -m spinegrade.cli.serve --port P [--workers W] [--queue Q]``
  started in the workspace in its own process group, timed until ``GET /health`` answers
  ``{"status": "ready"}``. Each test study is zipped in memory once (its folder, with the
  study id as the zip's top folder, deflated). Then one scenario per --clients value: N
  threads, each with its own HTTP session, loop over the studies (client c starting at
  study c*S/N) and POST each zip to ``/v1/grade`` (multipart field ``study``) until the
  scenario has --requests uploads answered. A 503 is counted, then retried after its
  Retry-After seconds (the retry is part of the same upload). Per scenario: studies per
  minute (uploads answered 200 over the scenario's wall time), latency p50/p95/max per
  upload (from its first attempt to its answer: 503 retries and waits included), the
  service's own time p50 (the answer's ``seconds``: unpacking, waiting for the model and
  grading), the count of 200s, 503s and other answers (any other status, a connection
  error, a timeout). A study's first answer is checked against predict's rows for it (the
  largest absolute difference is printed);
* memory -- the resident set size (psutil RSS, summed over the service's process group)
  when the service has answered the 10th and the 200th upload with a 200 (counted across
  the scenarios; --memory-after changes the two counts), taken by the client that got that
  answer before it sends again, with the number of uploads then in flight; their ratio;
  and the peak RSS sampled every second. If the scenarios end before the second count,
  one client keeps uploading ("top-up") until it is reached.

Then a table against the issue's goals: the 4-client throughput at least 90% of predict's
warm batch rate; the one-client p50 at most 1.5 s per study; memory after 200 within 10%
of memory after 10; no answer but 200 and 503 under 8 clients. The goals are reported,
not enforced: the script exits 1 only when an upload got an answer other than 200 or 503
(or no answer), or when the service or predict cannot run. The CPU model, whether it has
avx512_bf16 (bf16 matmuls: engine.precision auto uses bf16 there) and the core count come
first. Other jobs on the machine slow each phase (torch's threads fight theirs for the
cores, far beyond their share): the 1-minute load average at the start of each phase is
printed beside its numbers; compare runs only at a similar, low load.

    .venv/bin/python benchmarks/bench_serve.py [--workspace DIR] [--clients 1,4,8]
        [--requests 200] [--workers W] [--queue Q]
    make bench-serve ARGS="--workspace ../trained --requests 50"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from spinegrade.cli.process_group import free_port, group_members, start_server, stop_group
from spinegrade.inference.files import BundleFiles

IMAGES = Path("data/raw/test_images")
SERIES = Path("data/raw/test_series_descriptions.csv")
GOAL_THROUGHPUT = 0.90  # the 4-client rate over predict's warm rate, at least
GOAL_P50_S = 1.5  # one client's median latency, at most
GOAL_MEMORY = 0.10  # memory after 200 within this fraction of memory after 10
MAX_RETRIES = 100  # 503s in a row for one upload before the client gives up (an error)
MB = 2**20
NAN = float("nan")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workspace", type=Path, default=Path("."), help="a finished `make repro`")
    p.add_argument("--clients", default="1,4,8", help="one scenario per value (default 1,4,8)")
    p.add_argument(
        "--requests", type=int, default=200, help="uploads answered per scenario (default 200)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help="serve --workers (default 0: the service's own)"
    )
    p.add_argument("--queue", type=int, default=4, help="serve --queue (default 4, as serve)")
    p.add_argument(
        "--memory-after",
        default="10,200",
        metavar="A,B",
        help="successful uploads after which RSS is taken (default 10,200)",
    )
    p.add_argument(
        "--warm-repeats",
        type=int,
        default=3,
        help="warm predict passes before and after the service (default 3 each)",
    )
    p.add_argument("--port", type=int, default=0, help="service port (default: a free one)")
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds per HTTP request (default 600)"
    )
    p.add_argument(
        "--start-timeout", type=float, default=600, help="seconds to wait for /health ready"
    )
    args = p.parse_args()
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
        args.memory_after = [int(c) for c in args.memory_after.split(",")]
    except ValueError:
        p.error("--clients and --memory-after take comma-separated integers")
    if min(args.clients) < 1 or args.requests < 1 or args.warm_repeats < 1:
        p.error("--clients, --requests and --warm-repeats must be at least 1")
    if len(args.memory_after) != 2 or not 0 < args.memory_after[0] < args.memory_after[1]:
        p.error("--memory-after takes two increasing positive counts, e.g. 10,200")
    if args.workers < 0 or args.queue < 0:
        p.error("--workers and --queue must not be negative")
    args.workspace = args.workspace.resolve()
    others = [args.workspace / n for n in ("params.yaml", IMAGES, SERIES)]
    absent = BundleFiles.workspace(args.workspace).missing()
    absent += [p for p in others if not p.exists()]
    missing = ", ".join(str(p.relative_to(args.workspace)) for p in absent)
    if missing:
        p.error(f"{args.workspace} is no finished `make repro` workspace: no {missing}")
    return args


# --- the machine ----------------------------------------------------------------------


def machine_line() -> str:
    """CPU model, avx512_bf16, cores, load average and RAM, in one line."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    if not flags:  # no /proc/cpuinfo flags line: ask lscpu
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            flags = {
                w for line in out.splitlines() if line.startswith("Flags") for w in line.split()
            }
    bf16 = "yes" if "avx512_bf16" in flags else ("no" if flags else "unknown")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {model}; avx512_bf16: {bf16}; cores: {os.cpu_count()} (os.cpu_count), "
        f"{usable} usable by this process, {psutil.cpu_count(logical=False)} physical; "
        f"load average {os.getloadavg()[0]:.2f} (1 min); "
        f"RAM {psutil.virtual_memory().total / 2**30:.1f} GiB; {platform.platform()}"
    )


# --- predict ---------------------------------------------------------------------------


def cold_predict(ws: Path, series_csv: Path, out_dir: Path, label: str) -> float:
    """Wall seconds of the ``spinegrade predict`` command over ``series_csv``'s studies."""
    out, log = out_dir / f"{label}.csv", out_dir / f"{label}.log"
    cmd = [sys.executable, "-m", "spinegrade.cli.main", "predict", "--images", str(IMAGES)]
    cmd += ["--series", str(series_csv), "--out", str(out)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ws, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"spinegrade predict ({label}) exited with {code}:\n{tail}")
    return wall


def warm_predict(ws: Path, repeats: int):
    """(seconds per pass of each repeat, predict's submission): the bundle loaded once."""
    from spinegrade.core.config.params import load_params
    from spinegrade.core.runtime import set_threads
    from spinegrade.data.tables import read_series_table
    from spinegrade.inference.predict import load_bundle, predict_studies

    params = load_params(ws / "params.yaml")
    set_threads(params.engine.threads)
    files = BundleFiles.workspace(ws)
    bundle = load_bundle(files, params)
    series = read_series_table(ws / SERIES)
    first = int(series["study_id"].iloc[0])
    predict_studies(ws / IMAGES, series, bundle, studies=[first])  # untimed: first-call set-up
    passes, submission = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        submission = predict_studies(ws / IMAGES, series, bundle).submission
        passes.append(time.perf_counter() - t0)
    return passes, submission


# --- the service -----------------------------------------------------------------------


def study_zips(ws: Path, study_ids: list[int]) -> list[tuple[int, bytes]]:
    """(study id, a .zip of its folder with the id as top folder), made in memory."""
    zips = []
    for sid in study_ids:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((ws / IMAGES / str(sid)).rglob("*")):
                if f.is_file():
                    zf.write(f, f"{sid}/{f.relative_to(ws / IMAGES / str(sid))}")
        zips.append((sid, buf.getvalue()))
    return zips


def group_rss(pgid: int) -> int:
    """Bytes resident, summed over the live processes of process group ``pgid``."""
    total = 0
    for proc in group_members(pgid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def log_tail(path: Path, lines: int = 40) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Poll /health until it says ready; exit naming the reason if it fails or ends."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            answer = requests.get(f"{url}/health", timeout=5)
            body = answer.json()
            if answer.status_code == 200 and body.get("status") == "ready":
                return
            if body.get("status") == "failed":
                raise SystemExit(f"the service could not load its model: {body.get('error')}")
            last = f"{answer.status_code} {body}"
        except (requests.RequestException, ValueError) as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise SystemExit(f"/health not ready after {timeout:.0f} s (last: {last}):\n{log_tail(log)}")


@dataclass
class Tally:
    """What the clients of a run saw; shared by the threads (under ``lock``)."""

    pgid: int
    checkpoints: list[int]
    expected: dict[str, list[float]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    successes: int = 0  # over the whole run (all scenarios): the memory checkpoints count these
    inflight: int = 0
    memory: dict[int, tuple[int, int]] = field(default_factory=dict)  # count -> (rss, in flight)
    checked: dict[int, float] = field(default_factory=dict)  # study -> max |service - predict|


@dataclass
class Scenario:
    name: str
    clients: int
    requests: int
    wall: float = 0.0
    load: float = 0.0  # the 1-minute load average at its start
    latencies: list[float] = field(default_factory=list)
    grading: list[float] = field(default_factory=list)
    ok: int = 0
    busy: int = 0
    errors: list[str] = field(default_factory=list)


def run_scenario(
    sc: Scenario,
    url: str,
    zips: list[tuple[int, bytes]],
    tally: Tally,
    timeout: float,
    until_successes: int | None = None,
) -> None:
    """``sc.clients`` threads upload until ``sc.requests`` uploads are answered (or, with
    ``until_successes``, until the run has that many 200s)."""
    tickets = iter(range(sc.requests if until_successes is None else 10**9))
    ticket_lock = threading.Lock()

    def take() -> bool:
        with ticket_lock:
            if until_successes is not None and tally.successes >= until_successes:
                return False
            return next(tickets, None) is not None

    def client(c: int) -> None:
        session = requests.Session()
        k = c * len(zips) // sc.clients
        while take():
            sid, data = zips[k % len(zips)]
            k += 1
            try:
                upload(session, sid, data)
            except Exception as exc:  # counted, not a silently dead client thread
                record_error(f"study {sid}: the client failed: {exc!r}")

    def upload(session: requests.Session, sid: int, data: bytes) -> None:
        t0 = time.perf_counter()
        with tally.lock:
            tally.inflight += 1
        for _ in range(MAX_RETRIES + 1):
            try:
                files = {"study": (f"{sid}.zip", data, "application/zip")}
                answer = session.post(f"{url}/v1/grade", files=files, timeout=timeout)
            except requests.RequestException as exc:
                record_error(f"study {sid}: {type(exc).__name__}: {exc}")
                return
            if answer.status_code != 503:
                break
            with tally.lock:
                sc.busy += 1
            time.sleep(retry_after(answer))
        else:
            record_error(f"study {sid}: still 503 after {MAX_RETRIES} retries")
            return
        if answer.status_code != 200:
            record_error(f"study {sid}: HTTP {answer.status_code}: {answer.text[:300]}")
            return
        latency = time.perf_counter() - t0
        try:
            body = answer.json()
        except ValueError:
            record_error(f"study {sid}: HTTP 200 but no JSON: {answer.text[:300]}")
            return
        with tally.lock:
            tally.inflight -= 1
            sc.ok += 1
            sc.latencies.append(latency)
            sc.grading.append(float(body.get("seconds", "nan")))
            tally.successes += 1
            count = tally.successes
            if sid not in tally.checked:
                tally.checked[sid] = difference(body, tally.expected)
        if count in tally.checkpoints:  # this client sends nothing meanwhile
            tally.memory[count] = (group_rss(tally.pgid), tally.inflight)

    def record_error(message: str) -> None:
        with tally.lock:
            tally.inflight -= 1
            sc.errors.append(message)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(sc.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sc.wall = time.perf_counter() - t0
    if until_successes is not None:
        sc.requests = sc.ok + len(sc.errors)


def retry_after(answer: requests.Response) -> float:
    value = answer.headers.get("Retry-After", "1")
    return float(value) if value.replace(".", "", 1).isdigit() else 1.0


def difference(body: dict, expected: dict[str, list[float]]) -> float:
    """Largest |service - predict| over an answer's rows (inf: a row predict lacks)."""
    worst = 0.0
    for row in body.get("rows", []):
        want = expected.get(row.get("row_id"))
        if want is None:
            return float("inf")
        got = [row["normal_mild"], row["moderate"], row["severe"]]
        worst = max(worst, *(abs(g - w) for g, w in zip(got, want, strict=True)))
    return worst if body.get("rows") else float("inf")


class PeakSampler(threading.Thread):
    """The highest group RSS seen, sampled every ``every`` seconds until stopped."""

    def __init__(self, pgid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pgid, self.every, self.peak = pgid, every, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.peak = max(self.peak, group_rss(self.pgid))


# --- the report ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


@dataclass
class Served:
    """What the service run gave: a line on the service, the scenarios, the tally (memory
    checkpoints, rows checked), the peak RSS, and the other answers with the log's tail."""

    info: str
    scenarios: list[Scenario]
    tally: Tally
    peak: int
    failed: list[str]
    log_tail: str


def main() -> None:
    args = parse_args()
    ws = args.workspace
    print(machine_line(), flush=True)
    from spinegrade.data.tables import read_series_table  # after the line: imports pandas

    series = read_series_table(ws / SERIES)
    study_ids = list(dict.fromkeys(series["study_id"].astype("int64").tolist()))
    n = len(study_ids)
    print(f"workspace: {ws}; {n} test studies ({SERIES})", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        one = tmp / "one-study.csv"
        series[series["study_id"] == study_ids[0]].to_csv(one, index=False)
        loads = [load("predict, cold", f"all {n} studies, then 1")]
        cold = (cold_predict(ws, ws / SERIES, tmp, "cold-all"), cold_predict(ws, one, tmp, "one"))
        loads.append(load("predict, warm", f"{args.warm_repeats} pass(es) over {n} studies"))
        passes, submission = warm_predict(ws, args.warm_repeats)
        expected = {
            r.row_id: [r.normal_mild, r.moderate, r.severe]
            for r in submission.itertuples(index=False)
        }
        served = serve_scenarios(args, ws, study_zips(ws, study_ids), expected, tmp)
        loads.append(load("predict, warm, after the service", f"{args.warm_repeats} pass(es)"))
        after, _ = warm_predict(ws, args.warm_repeats)

    # predict's warm batch rate (studies/min), over the passes before and after the service
    rate = 60 * n / statistics.median(passes + after)
    print_predict(n, cold, (passes, after), rate, loads)
    print_serve(served)
    ratio = print_memory(served.tally, args.memory_after, served.peak)
    print_goals(served.scenarios, rate, ratio, args.memory_after)
    if served.failed:
        print(
            f"\n{len(served.failed)} upload(s) got an answer other than 200 or 503:",
            file=sys.stderr,
        )
        for message in served.failed[:10]:
            print(f"  {message}", file=sys.stderr)
        print(f"the service's log, last lines:\n{served.log_tail}", file=sys.stderr)
        sys.exit(1)


def load(phase: str, what: str) -> float:
    """Say a phase starts (with the 1-minute load average: other jobs slow it); the load."""
    now = os.getloadavg()[0]
    print(f"{phase}: {what} ... (load average {now:.2f})", flush=True)
    return now


def print_predict(
    n: int,
    cold: tuple[float, float],
    warm: tuple[list[float], list[float]],
    rate: float,
    loads: list[float],
) -> None:
    """The predict table; ``warm``: the warm passes' seconds before and after the service."""
    print(f"\n## spinegrade predict over the {n} test studies\n")
    print("| measure | value |\n|---|---:|")
    print(f"| cold, {n} studies: wall of the command, model load included (s) | {cold[0]:.1f} |")
    print(f"| cold, {n} studies: studies per minute | {60 * n / cold[0]:.1f} |")
    print(f"| cold, 1 study: wall of the command (s) | {cold[1]:.1f} |")
    for when, passes in zip(("before", "after"), warm, strict=True):
        each = ", ".join(f"{p:.1f}" for p in passes)
        print(
            f"| warm, {when} the service: s per study (median of {len(passes)} pass(es): "
            f"{each} s) | {statistics.median(passes) / n:.2f} |"
        )
    print(f"| warm: studies per minute over all those passes (predict's batch rate) | {rate:.1f} |")
    print(
        "| load average (1 min) at the start: cold, warm before, warm after "
        f"| {', '.join(f'{v:.2f}' for v in loads)} |"
    )


def print_serve(served: Served) -> None:
    print(f"\n## spinegrade serve ({served.info})\n")
    print(
        "| clients | uploads | wall (s) | studies/min | p50 (s) | p95 (s) | max (s) "
        "| service p50 (s) | 200 | 503 (retried) | other | load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in served.scenarios:
        lat = sc.latencies
        print(
            f"| {sc.name} | {sc.requests} | {sc.wall:.1f} | {60 * sc.ok / sc.wall:.1f} "
            f"| {pct(lat, 0.5):.2f} | {pct(lat, 0.95):.2f} | {max(lat, default=NAN):.2f} "
            f"| {pct(sc.grading, 0.5):.2f} | {sc.ok} | {sc.busy} | {len(sc.errors)} "
            f"| {sc.load:.2f} |"
        )
    diffs = list(served.tally.checked.values())
    print(
        "\nlatency: per upload, from its first attempt to its answer (503 waits included); "
        "service: the answer's `seconds` (from the upload received to the answer: unpacking, "
        "waiting for the model, grading); load average: 1 min, at the scenario's start.\n"
        "rows against predict's for the same study: "
        f"max |difference| {max(diffs, default=NAN):.2g} over {len(diffs)} studies."
    )


def print_memory(tally: Tally, counts: list[int], peak: int) -> float | None:
    """The memory table; the ratio of RSS at the second count over the first (None: n/a)."""
    a, b = counts
    print("\n## service memory (RSS summed over its process group)\n")
    print("| measure | MB |\n|---|---:|")
    for count in counts:
        rss, inflight = tally.memory.get(count, (0, 0))
        value = f"{rss / MB:.0f}" if rss else "n/a"
        print(f"| after {count} uploads answered 200 ({inflight} others in flight) | {value} |")
    ratio = tally.memory[b][0] / tally.memory[a][0] if {a, b} <= tally.memory.keys() else None
    print(f"| ratio after {b} / after {a} | {f'{ratio:.3f}' if ratio else 'n/a'} |")
    print(f"| peak (sampled every 1 s) | {peak / MB:.0f} |")
    return ratio


def print_goals(
    scenarios: list[Scenario], rate: float, ratio: float | None, counts: list[int]
) -> None:
    """The issue's goals: (goal, measured, met: True/False/None for n/a) as a table."""
    by_clients = {sc.clients: sc for sc in scenarios if not sc.name.startswith("top-up")}
    goals: list[tuple[str, str, bool | None]] = []
    if sc := by_clients.get(4):
        share = 60 * sc.ok / sc.wall / rate
        measured = f"{share:.0%} ({60 * sc.ok / sc.wall:.1f} vs {rate:.1f} studies/min)"
        goal = f"throughput, 4 clients >= {GOAL_THROUGHPUT:.0%} of predict's warm rate"
        goals.append((goal, measured, share >= GOAL_THROUGHPUT))
    else:
        goals.append(("throughput, 4 clients", "n/a (no 4-client scenario)", None))
    if (sc := by_clients.get(1)) and sc.latencies:
        p50 = pct(sc.latencies, 0.5)
        goals.append(
            (f"p50, 1 client <= {GOAL_P50_S} s a study", f"{p50:.2f} s", p50 <= GOAL_P50_S)
        )
    else:
        goals.append(("p50, 1 client", "n/a (no 1-client scenario)", None))
    goal = f"memory after {counts[1]} within {GOAL_MEMORY:.0%} of after {counts[0]}"
    if ratio:
        goals.append((goal, f"{ratio - 1:+.1%}", abs(ratio - 1) <= GOAL_MEMORY))
    else:
        goals.append((goal, "n/a", None))
    if sc := by_clients.get(8):
        measured = f"{len(sc.errors)} other ({sc.busy} 503s, retried)"
        goals.append(("no answer but 200 and 503 under 8 clients", measured, not sc.errors))
    else:
        goals.append(("errors under 8 clients", "n/a (no 8-client scenario)", None))
    print("\n## goals (issue 25, item 7)\n")
    print("| goal | measured | met |\n|---|---|---|")
    for goal, measured, met in goals:
        print(f"| {goal} | {measured} | {'n/a' if met is None else ('yes' if met else 'NO')} |")


def serve_scenarios(
    args: argparse.Namespace,
    ws: Path,
    zips: list[tuple[int, bytes]],
    expected: dict[str, list[float]],
    tmp: Path,
) -> Served:
    """Start the service in ``ws``, run the scenarios (and the top-up), stop its group."""
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "spinegrade.cli.serve", "--port", str(port)]
    cmd += ["--queue", str(args.queue), "--workers", str(args.workers)]
    log = tmp / "serve.log"
    size = sum(len(d) for _, d in zips) / MB
    print(f"serve: starting on {url} ({len(zips)} study zips, {size:.1f} MB) ...", flush=True)
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = start_server(cmd, cwd=ws, stdout=out, stderr=subprocess.STDOUT)
    sampler = None
    try:
        wait_ready(proc, url, log, args.start_timeout)
        ready = time.perf_counter() - t0
        health = requests.get(f"{url}/health", timeout=5).json()
        capacity = int(health.get("capacity", 0))
        info = (
            f"ready {ready:.1f} s after start; {capacity - args.queue} unpacking process(es) "
            f"(--workers {args.workers or 'default'}), --queue {args.queue}"
        )
        tally = Tally(proc.pid, args.memory_after, expected)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        scenarios = []
        for clients in args.clients:
            sc = Scenario(f"{clients}", clients, args.requests)
            sc.load = load("serve", f"{clients} client(s), {args.requests} uploads")
            run_scenario(sc, url, zips, tally, args.timeout)
            scenarios.append(sc)
            check_alive(proc, log)
        if tally.successes < args.memory_after[1]:
            sc = Scenario("top-up, 1", 1, 0)
            need = args.memory_after[1] - tally.successes
            sc.load = load("serve", f"top-up, 1 client, {need} more uploads for the memory count")
            run_scenario(sc, url, zips, tally, args.timeout, until_successes=args.memory_after[1])
            scenarios.append(sc)
        check_alive(proc, log)
        sampler.done.set()
        failed = [e for sc in scenarios for e in sc.errors]
        return Served(info, scenarios, tally, sampler.peak, failed, log_tail(log) if failed else "")
    finally:
        if sampler is not None:
            sampler.done.set()
        stop_group(proc)


def check_alive(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise SystemExit(f"the service died (exit {proc.returncode}):\n{log_tail(log)}")


if __name__ == "__main__":
    main()
