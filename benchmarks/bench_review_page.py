"""Benchmark a review page (spinegrade.inference.page) in headless chromium.

What is measured, on the page file PAGE (e.g. data/predict/review.html):

* from the file: its size, the number of studies (entries of the ``review-index`` JSON
  block) and the largest study data block (``<script id="study-<id>">``, bytes of JSON);
* load -- wall clock (``time.perf_counter``) from the start of ``page.goto(file URL)``
  until the overview table has a row per study and every overview image is complete
  (the thumbnails are loading="lazy": those chromium defers, below the viewport, are not
  waited for), and the browser's navigation timing (``getEntriesByType('navigation')``:
  DOMContentLoaded end, load event end, relative to the navigation's start);
* study open -- for each study (or the first ``--studies K``), from the overview: the
  time, in the page (``performance.now``), from ``location.hash = '#study-<id>'`` until
  the page's hashchange handler has built the study, it has at least one row and every
  ``#study-view`` image (views, crops, Grad-CAMs) is complete (its load or error event);
  then back to the overview (``#overview``, untimed). Median and max over the studies;
* the JS heap in use after opening them: ``performance.memory.usedJSHeapSize`` (n/a if
  absent; without --enable-precise-memory-info chromium rounds it, to 10 MB steps here)
  and, exact, DevTools' ``Runtime.getHeapUsage`` after a forced garbage collection.

Each repeat is a fresh chromium (``offline_page`` of scripts/browser.py: headless,
offline, every non-file request refused) and reports the median over ``--repeats``.
Exits 1 if the page logs an error, refuses a request, a study shows no rows or an image
fails to decode.

    .venv/bin/python benchmarks/bench_review_page.py data/predict/review.html [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

# scripts/browser.py: development tooling (not in the package) shared with the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from browser import offline_page  # noqa: E402

BLOCK = re.compile(
    rb'<script type="application/json" id="(review-index|study-\d+)">(.*?)</script>', re.S
)
OVERVIEW_READY = """n => document.querySelectorAll('#overview tbody tr[data-study-id]').length >= n
    && [...document.querySelectorAll('#overview-view img')].every(i => i.complete
        || (i.loading === 'lazy' && i.getBoundingClientRect().top > innerHeight))"""
NAV = "performance.getEntriesByType('navigation')[0]"
OPEN_STUDY = """async ([id, timeout]) => {
    const t0 = performance.now();
    const routed = new Promise(r => addEventListener('hashchange', r, {once: true}));
    location.hash = '#study-' + id;
    const wait = new Promise(r => setTimeout(r, timeout));
    await Promise.race([routed, wait]);  // after the page's own handler, registered first
    const imgs = [...document.querySelectorAll('#study-view img')];
    const loaded = imgs.map(i => i.complete || i.naturalWidth > 0 ? null : new Promise(r => {
        i.addEventListener('load', r); i.addEventListener('error', r); }));
    await Promise.race([Promise.all(loaded), wait]);
    return {ms: performance.now() - t0,
            rows: document.querySelectorAll('#rows tbody tr[data-row-id]').length,
            pending: imgs.filter(i => !i.complete).length,
            broken: imgs.filter(i => i.complete && i.naturalWidth === 0).length};
}"""


def page_facts(path: Path) -> tuple[list[int], dict[str, int]]:
    """(study ids of the review index, {block id: bytes of JSON}) read from the HTML."""
    blocks = {m[1].decode(): m[2] for m in BLOCK.finditer(path.read_bytes())}
    if "review-index" not in blocks:
        raise SystemExit(f"{path}: no review-index block; is it a review page?")
    ids = [int(s["study_id"]) for s in json.loads(blocks["review-index"])["studies"]]
    return ids, {k: len(v) for k, v in blocks.items() if k != "review-index"}


def one_run(url: str, ids: list[int], open_ids: list[int]) -> dict[str, float | None]:
    """One fresh browser: load the page, open each of ``open_ids``; the measures."""
    with offline_page("about:blank") as (page, problems):
        t0 = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_function(OVERVIEW_READY, arg=len(ids), timeout=120_000)
        load = (time.perf_counter() - t0) * 1000
        page.wait_for_function(f"{NAV}?.loadEventEnd > 0")  # then both are final
        dcl, load_event = page.evaluate(f"[{NAV}.domContentLoadedEventEnd, {NAV}.loadEventEnd]")
        opens = []
        for sid in open_ids:
            r = page.evaluate(OPEN_STUDY, [sid, 10_000])
            if r["rows"] == 0 or r["pending"] or r["broken"]:
                problems.append(f"study {sid}: {r['rows']} rows, {r['pending']} images not loaded")
                problems[-1] += f" after 10 s, {r['broken']} broken"
            opens.append(r["ms"])
            page.evaluate("location.hash = '#overview'")
            page.wait_for_function("!document.getElementById('overview-view').hidden")
        memory = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
        cdp = page.context.new_cdp_session(page)
        cdp.send("HeapProfiler.collectGarbage")
        heap = cdp.send("Runtime.getHeapUsage")["usedSize"]
        if problems:
            raise SystemExit("the review page has problems:\n  " + "\n  ".join(problems))
    memory = memory / 1e6 if memory is not None else None
    return dict(
        load=load,
        dcl=dcl,
        load_event=load_event,
        memory=memory,
        heap=heap / 1e6,
        open_median=statistics.median(opens),
        open_max=max(opens),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("page", type=Path, metavar="PAGE", help="e.g. data/predict/review.html")
    p.add_argument("--repeats", type=int, default=3, help="fresh-browser runs (default: 3)")
    p.add_argument("--studies", type=int, metavar="K", help="open the first K (default: all)")
    args = p.parse_args()
    if not args.page.is_file():
        p.error(f"no such file: {args.page}")
    if args.repeats < 1 or (args.studies is not None and args.studies < 1):
        p.error("--repeats and --studies must be at least 1")
    ids, blocks = page_facts(args.page)
    if not ids:
        raise SystemExit(f"{args.page}: the review index lists no study")
    open_ids = ids[: args.studies]
    runs = []
    for i in range(args.repeats):
        print(f"run {i + 1}/{args.repeats}: opening {len(open_ids)} studies ...", flush=True)
        runs.append(one_run(args.page.resolve().as_uri(), ids, open_ids))

    def median(key: str, digits: int = 0) -> str:
        values = [r[key] for r in runs if r[key] is not None]
        return f"{statistics.median(values):.{digits}f}" if values else "n/a"

    biggest = max(blocks, key=blocks.__getitem__)  # a study without a block showed no rows
    k = len(open_ids)
    rows = [
        ("page size (MB)", f"{args.page.stat().st_size / 1e6:.2f}"),
        ("studies (review-index)", len(ids)),
        ("largest study data block (KB)", f"{blocks[biggest] / 1024:.0f} ({biggest})"),
        ("load: goto to overview ready, wall (ms)", median("load")),
        ("load: DOMContentLoaded end, navigation timing (ms)", median("dcl")),
        ("load: load event end, navigation timing (ms)", median("load_event")),
        (f"study open, median of {k} (ms)", median("open_median", 1)),
        (f"study open, max of {k} (ms)", median("open_max", 1)),
        (f"JS heap after opening {k}, performance.memory (MB)", median("memory", 1)),
        (f"JS heap after opening {k}, Runtime.getHeapUsage after GC (MB)", median("heap", 1)),
    ]
    print(
        f"\nmachine: {platform.platform()}, os.cpu_count()={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f} (1 min); page {args.page}; "
        f"median of {args.repeats} fresh-browser run(s)\n"
    )
    print("| measure | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
