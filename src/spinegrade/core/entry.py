"""Command-line plumbing shared by the stage scripts and the ``spinegrade`` command."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from spinegrade.core.errors import EXPECTED_ERRORS


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once, for a command-line entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage script: its docstring as help, plus --params."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run(body: Callable[[], None]) -> int:
    """Run a command body; turn the project's expected errors into one clear line, exit 1."""
    try:
        body()
    except EXPECTED_ERRORS as exc:
        logging.getLogger("spinegrade").error("%s", exc)
        return 1
    return 0
