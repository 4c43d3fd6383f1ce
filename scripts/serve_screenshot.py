"""A screenshot of `spinegrade serve`'s upload page after it graded a study, for docs/serve.md.

Opens SERVICE/ in Debian's chromium (headless, offline but for the service, driven by
Playwright), chooses ZIP in the page's file input, waits for the study's 25 rows and its
review (the images with the points found), and writes ``serve-upload.png`` into ``--out``
(the full page, cut at ``--max-height`` pixels).

Usage: python scripts/serve_screenshot.py http://127.0.0.1:8000 study.zip [--out docs/]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from browser import offline_page  # scripts/browser.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("service", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("zip", type=Path, help="a study's .zip")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="directory of the PNG")
    parser.add_argument("--max-height", type=int, default=1800, help="cut the shot here (px)")
    args = parser.parse_args(argv)
    base = args.service.rstrip("/")
    with offline_page(base + "/", 1400, 1000, service=base) as (page, problems):
        page.set_input_files("#zip-input", str(args.zip))
        page.locator("#rows tbody tr").nth(24).wait_for(timeout=300_000)
        frame = page.frame_locator("#review")
        frame.locator("#study-view .view img").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # the frame's images decode
        height = page.evaluate("document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": 1400, "height": min(height, args.max_height)}
        path = args.out / "serve-upload.png"
        page.screenshot(path=str(path), full_page=True, clip=clip)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
