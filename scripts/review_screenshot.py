"""Screenshots of a review page (spinegrade.inference.page), for docs/predict.md and the README.

Opens the page from disk in Debian's chromium (headless, offline, driven by Playwright) at
1400x900 and writes two PNGs into ``--out``: ``review-overview.png`` (the overview, in its
default order) and ``review-study.png`` (the first study of that order, opened: its
warnings, images and rows table; the full page, cut at ``--max-height`` pixels).

Usage: python scripts/review_screenshot.py PAGE.html [--out docs/] [--max-height 2200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser import offline_page  # scripts/browser.py

IMAGES_LOADED = "[...document.images].every(i => i.complete)"


def _shot(page, path: Path, max_height: int) -> None:
    """A full-page screenshot of ``page``, cut at ``max_height`` pixels."""
    width, height = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": min(height, max_height)}
    page.screenshot(path=str(path), full_page=True, clip=clip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the review page (HTML written by write_page)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="directory of the PNGs")
    parser.add_argument("--width", type=int, default=1400, help="viewport width (px)")
    parser.add_argument("--height", type=int, default=900, help="viewport height (px)")
    parser.add_argument(
        "--max-height", type=int, default=2200, help="cut the full-page shots at this height (px)"
    )
    args = parser.parse_args(argv)
    if not args.page.is_file():
        parser.error(f"no such page: {args.page}")
    args.out.mkdir(parents=True, exist_ok=True)
    overview, study = args.out / "review-overview.png", args.out / "review-study.png"
    written = [overview]
    url = args.page.resolve().as_uri()
    with offline_page(url, args.width, args.height) as (page, errors):
        page.wait_for_selector("#overview tbody tr")
        page.wait_for_function(IMAGES_LOADED)
        _shot(page, overview, args.max_height)
        first = page.locator("#overview tbody tr[data-study-id]").first
        if first.count():
            page.goto(f"{url}#study-{first.get_attribute('data-study-id')}")
            page.wait_for_selector("#study-view:not([hidden])")
            page.wait_for_function(IMAGES_LOADED)
            _shot(page, study, args.max_height)
            written.append(study)
        else:
            print("the page has no study: no study screenshot", file=sys.stderr)
    for message in errors:
        print(f"page error: {message}", file=sys.stderr)
    print("wrote " + " and ".join(map(str, written)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
