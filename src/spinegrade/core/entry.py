"""Command-line plumbing shared by the stage scripts and the ``spinegrade`` command.

The console stays quiet: a stage shows its progress bars and one summary line
(:func:`summary`: counts, the headline metric, where the outputs went). The project's other
messages are at debug level, libraries log warnings and errors only, and Python warnings go
to the log at debug level. ``-v`` shows
all of it: debug logging, the libraries' info lines and every Python warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from spinegrade.core.errors import EXPECTED_ERRORS

log = logging.getLogger("spinegrade")

# Libraries that configure their own loggers (handler, level, no propagation), so the root
# logger's level does not reach them: MLflow logs system-metrics start/stop, database
# creation and run links at info level.
_OWN_LOGGERS = ("mlflow", "alembic", "huey")


class _ConsoleFormatter(logging.Formatter):
    """Info lines as they are; warnings and errors with their level and logger."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` replacement: the warning goes to the log at debug level."""
    logging.getLogger("py.warnings").debug(
        "%s:%s: %s: %s", filename, lineno, category.__name__, message
    )


def setup_logging(verbose: bool = False) -> None:
    """Configure logging once, for a command-line entry point (see the module docstring)."""
    handler = logging.StreamHandler()
    if verbose:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(_ConsoleFormatter())
    handler.set_name("spinegrade-console")
    root = logging.getLogger()
    # replaces its own handler from an earlier call; keeps others' (pytest's log capture)
    root.handlers = [h for h in root.handlers if h.get_name() != handler.get_name()]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # MLflow sets its logger's level again where it is first imported
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # shown by the handler above under -v, else dropped with the other debug messages;
    # filters (python -W, PYTHONWARNINGS) still decide which warnings are errors
    warnings.showwarning = _warning_to_log


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage script: its docstring as help, plus --params."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, libraries' info lines and Python warnings",
    )
    return parser


def summary(text: str, *made: str | Path) -> None:
    """A command's one line on the console once its work is done: what it did, then
    ``-> `` and the paths it wrote (the project's other messages are at debug level)."""
    log.info("%s", f"{text} -> {', '.join(map(str, made))}" if made else text)


def run(body: Callable[[], None]) -> int:
    """Run a command body; turn the project's expected errors into one clear line, exit 1."""
    try:
        body()
    except EXPECTED_ERRORS as exc:
        log.error("%s", exc)
        return 1
    return 0
