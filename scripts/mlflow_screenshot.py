"""Screenshot of the comparison in the MLflow UI, for docs/mlflow.md (docs/mlflow-comparison.png).

Starts the UI on this workspace's store exactly as ``make ui`` does (``spinegrade.cli.ui``,
its own process group, stopped at the end), opens the first link it prints (the comparison
experiment's chart view) in Debian's chromium, headless, driven by Playwright, waits until
the charts have drawn, and saves a PNG. With ``--review``, it opens instead the newest
``predict`` run's review.html artifact, which the UI shows inline, and waits for the
page's overview inside it (docs/mlflow-review.png). With ``--experiments``, it opens the
second link (the parent runs, one per DVC experiment, with their headline numbers: a
sweep side by side, docs/mlflow-sweep.png). Run after ``dvc repro``:

    .venv/bin/python scripts/mlflow_screenshot.py [--out docs/mlflow-comparison.png]
    .venv/bin/python scripts/mlflow_screenshot.py --review --out docs/mlflow-review.png
    .venv/bin/python scripts/mlflow_screenshot.py --experiments --out docs/mlflow-sweep.png
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from browser import CHROMIUM_ARGS, chromium_path  # scripts/browser.py

from spinegrade.cli.process_group import free_port
from spinegrade.cli.ui import RUNS_LINK


def _review_link(link: str) -> str:
    """The artifact view of review.html in the newest predict run of this workspace."""
    import mlflow

    from spinegrade.core.config.params import load_params
    from spinegrade.tracking import store

    experiment = store.setup(load_params("params.yaml").mlflow.experiment)
    runs = mlflow.search_runs(
        [experiment],
        filter_string="attributes.run_name = 'predict'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    base = link.split("#", 1)[0]
    return f"{base}#/experiments/{experiment}/runs/{runs.iloc[0]['run_id']}/artifacts/review.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default="docs/mlflow-comparison.png", help="PNG to write")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument(
        "--review", action="store_true", help="the predict run's review page, not the charts"
    )
    parser.add_argument(
        "--experiments", action="store_true", help="the DVC experiments' parent runs side by side"
    )
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = str(chromium_path())
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ui.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "spinegrade.cli.ui", "--port", str(free_port())],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while len(links := RUNS_LINK.findall(log.read_text())) < 2:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.3)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=chromium, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                if args.review:
                    page.goto(_review_link(links[0]))
                    page.wait_for_selector("iframe", timeout=120_000)
                    rows = page.frame_locator("iframe").locator("#overview tbody tr")
                    rows.first.wait_for(timeout=60_000)
                elif args.experiments:
                    page.goto(links[1])
                    page.wait_for_function(
                        "document.querySelectorAll('svg text').length > 20", timeout=60_000
                    )
                else:
                    page.goto(links[0])
                    page.get_by_text(" / ").first.wait_for(timeout=60_000)
                close = page.get_by_role("button", name="Close")  # the assistant side panel
                if close.count():
                    close.first.click()
                if not (args.review or args.experiments):
                    page.wait_for_function(
                        "document.querySelectorAll('svg text').length > 40", timeout=60_000
                    )
                time.sleep(2)  # the last chart's transition
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out)
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
