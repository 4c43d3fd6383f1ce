"""Debian's chromium, headless, for the browser tests, the screenshot scripts and the review
page benchmark: development tooling, not part of the installed package.

Playwright drives it (``executable_path``): it cannot download its own browsers here. Set
``CHROMIUM`` to use another binary. Playwright is a development dependency
(requirements-dev.txt), imported only when a page is opened. Scripts in scripts/ import it
as ``browser`` (their folder is first on the path); pytest puts scripts/ on the path
(``pythonpath`` in pyproject.toml); benchmarks/bench_review_page.py adds it itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

MISSING = "chromium is not installed: `apt-get install chromium` (make test does it as root)"


def chromium_path() -> Path:
    """The chromium binary: $CHROMIUM, else ``chromium`` on the PATH, else Debian's."""
    return Path(os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")


@contextmanager
def offline_page(
    url: str, width: int = 1400, height: int = 900, service: str | None = None
) -> Iterator[tuple]:
    """``url`` (a file:// page, or a page of ``service``) open in headless chromium with
    the network off.

    Args:
        service: a local service's base URL (``http://127.0.0.1:8000``) whose requests
            go through; every other one is still refused.

    Yields:
        (page, problems): the Playwright page, and a list that collects page errors,
        console errors and every request that is not a ``file:`` or ``data:`` URL nor one
        to ``service`` (each refused).

    Raises:
        FileNotFoundError: chromium is not installed (the message says how to install it).
    """
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    if not chromium.is_file():
        raise FileNotFoundError(MISSING)
    problems: list[str] = []
    allowed = ("file:", "data:", *([service.rstrip("/") + "/"] if service else []))

    def refuse_outside(route) -> None:
        if route.request.url.startswith(allowed):
            route.continue_()
        else:
            problems.append(f"request: {route.request.url}")
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            # offline emulation would cut the local service off too: the route refuses the rest
            viewport = {"width": width, "height": height}
            context = browser.new_context(offline=service is None, viewport=viewport)
            context.set_default_timeout(10_000)  # a broken page fails fast
            context.route("**/*", refuse_outside)
            page = context.new_page()
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url)
            yield page, problems
        finally:
            browser.close()
