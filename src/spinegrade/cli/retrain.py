"""Retrain from the DVC remote: ``python -m spinegrade.cli.retrain`` (``make retrain``).

The steps the CI workflow (.github/workflows/retrain.yml) runs, so they run the same way
on a laptop:

1. pull the tracked data (the ``*.dvc`` pointer files, e.g. data/rsna.dvc) from the default
   DVC remote; a missing object is an error that names it;
2. pull the pipeline's outputs and the run-cache (what is missing is rebuilt, not an error),
   so a stage that anyone already ran with the same inputs is restored, not re-run;
3. ``dvc repro``: only the stages whose code, params or data changed run;
4. ``dvc push --run-cache``: outputs and run-cache go back to the remote;
5. a Markdown summary (stages re-run, ``dvc metrics diff`` against ``--base``, the
   compare-backbones table) on stdout and appended to ``$GITHUB_STEP_SUMMARY`` when set.

DVC runs in this process through its Python API (``dvc.repo.Repo``), which returns the
results as data: ``Repo.status`` and the stage graph (``repo.index.graph``) give the stale
stages, ``Repo.reproduce`` the stages it reproduced, ``Repo.push`` the number of files sent.
Which of the reproduced stages were restored from the run-cache rather than run is seen at
the run-cache itself: ``repo.stage_cache.restore``, which ``dvc repro`` asks before running
a stage's command, is watched, and a stage it restored did not run. DVC's log (``Running
stage ...``, warnings) and the stages' own output stream to stdout as ``dvc repro`` prints
them; stderr holds only the error line. ``dvc metrics diff --md`` still runs as a command:
its Markdown table goes into the summary as DVC renders it.

With no DVC remote configured, steps 1, 2 and 4 are skipped with a note (the synthetic
default needs none). A run interrupted between repro and push is simply run again: repro
then has nothing to do and push sends what is missing (.dvc/tmp/retrain-unpushed remembers
that stages ran since the last push, so their run-cache entries go too). Errors are one
line naming the remote or the object; the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spinegrade.tracking.store import redact

if TYPE_CHECKING:
    from dvc.repo import Repo

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"

BASE_ENV = "RETRAIN_BASE"

COMPARE_TABLE = Path("reports/compare-backbones.md")

# Stages a retrain ran and has not pushed yet (it stopped before or during its push).
UNPUSHED = Path(".dvc/tmp/retrain-unpushed")

# The loggers DVC writes its console messages to.
DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")


class RetrainError(RuntimeError):
    """A step failed; the message names the remote, object or stage at fault."""


@dataclass
class Outcome:
    remote: str | None = None
    stale: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    pushed: int = 0


def reason(exc: BaseException) -> str:
    """An exception and its causes on one line, as the dvc command prints them
    (``message: cause: cause``)."""
    parts = []
    cause: BaseException | None = exc
    while cause is not None:
        parts.append(str(cause) or type(cause).__name__)
        cause = cause.__cause__
    return " ".join(": ".join(parts).split())


class _Errors(logging.Handler):
    """Collects the errors DVC logs, one line each (``message - cause: cause``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            line = " - ".join(filter(None, [line, reason(record.exc_info[1])]))
        self.lines.append(" ".join(line.split()))


@contextlib.contextmanager
def dvc_errors() -> Iterator[list[str]]:
    """The errors DVC logs inside the block. A transfer logs its cause (an unreachable
    endpoint, missing credentials) and then raises only a count ("1 files failed to
    download"): the message needs both."""
    errors = _Errors()
    loggers = [logging.getLogger(name) for name in DVC_LOGGERS]
    for lg in loggers:
        lg.addHandler(errors)
    try:
        yield errors.lines
    finally:
        for lg in loggers:
            lg.removeHandler(errors)


def failure(what: str, exc: BaseException, logged: list[str]) -> RetrainError:
    """RetrainError ``what: <the errors DVC logged>; <the exception and its causes>``."""
    return RetrainError(f"{what}: {'; '.join(dict.fromkeys([*logged, reason(exc)]))}")


@contextlib.contextmanager
def dvc_console() -> Iterator[None]:
    """DVC's console log on stdout: ``import dvc`` sets it up as the dvc command's
    (``Running stage 'x':`` on stdout, ``WARNING: ...`` on stderr); its warnings move to
    stdout here, with other libraries' warnings and Python warnings, so that stderr holds
    only retrain's error line."""
    import dvc  # noqa: F401  (importing it installs DVC's console handlers)

    to_stderr = {
        h
        for name in DVC_LOGGERS
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
    }
    others = logging.StreamHandler(sys.stdout)
    others.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    others.setLevel(logging.WARNING)
    others.addFilter(lambda record: record.name.partition(".")[0] not in DVC_LOGGERS)
    root = logging.getLogger()
    for handler in to_stderr:
        handler.setStream(sys.stdout)
    root.addHandler(others)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(others)
        for handler in to_stderr:
            handler.setStream(sys.stderr)


def open_repo() -> Repo:
    """The DVC project in the current directory (it must hold dvc.yaml)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not Path("dvc.yaml").is_file():
        raise RetrainError(f"{Path.cwd()}: no dvc.yaml here; run from the project root")
    try:
        return Repo()
    except DvcException as exc:
        raise RetrainError(f"{Path.cwd()}: {reason(exc)}") from None


@contextlib.contextmanager
def _repo(repo: Repo | None) -> Iterator[Repo]:
    """``repo``, or the current directory's, opened and closed here."""
    if repo is not None:
        yield repo
        return
    with open_repo() as opened:
        yield opened


def _is_pipeline_stage(stage) -> bool:
    """A stage of dvc.yaml (not the ``*.dvc`` pointer file of tracked data)."""
    from dvc.stage import PipelineStage

    return isinstance(stage, PipelineStage)


def default_remote(repo: Repo) -> tuple[str, str] | None:
    """(name, url with its password masked) of the default DVC remote, or None."""
    name = repo.config["core"].get("remote")
    if not name:
        return None
    return name, redact(repo.config["remote"].get(name, {}).get("url", ""))


def pointer_files(repo: Repo) -> list[str]:
    """The ``*.dvc`` files of tracked data, e.g. data/rsna.dvc."""
    return sorted(s.relpath for s in repo.index.stages if not _is_pipeline_stage(s))


def stale_stages(repo: Repo | None = None) -> list[str]:
    """The stages ``dvc repro`` will run, in pipeline order: those ``Repo.status`` reports
    as changed, and every stage downstream of them (status compares each stage with its
    recorded inputs only, so a stage whose upstream will change does not show there yet)."""
    import networkx as nx

    with _repo(repo) as repo:
        changed = set(repo.status())
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        stale = set()
        for stage in graph:
            if stage.addressing in changed:
                stale |= {stage} | nx.ancestors(graph, stage)  # it and all that depend on it
        return [s.addressing for s in graph if s in stale and _is_pipeline_stage(s)]


def _print_pulled(result: dict) -> None:
    from dvc.utils.humanize import get_summary

    print(get_summary(result.get("stats", {}).items()) or "everything is up to date", flush=True)


def pull(repo: Repo, remote: str) -> None:
    pointers = pointer_files(repo)
    if pointers:
        names = ", ".join(pointers)
        print(f"pulling the tracked data ({names}) from remote '{remote}'", flush=True)
        with dvc_errors() as logged:
            try:
                _print_pulled(repo.pull(targets=pointers))
            except Exception as exc:  # as the dvc command: DVC's and its storage libraries'
                what = f"remote '{remote}': could not pull the tracked data ({names})"
                raise failure(what, exc, logged) from None
    print(f"pulling pipeline outputs and the run-cache from remote '{remote}'", flush=True)
    with dvc_errors() as logged:
        try:  # allow_missing: an output nobody pushed yet is rebuilt, not an error
            _print_pulled(repo.pull(run_cache=True, allow_missing=True))
        except Exception as exc:
            raise failure(f"remote '{remote}': could not pull", exc, logged) from None


def reproduce(repo: Repo) -> tuple[list[str], list[str]]:
    """``dvc repro``: (stages run, stages restored from the run-cache), in pipeline order.

    ``Repo.reproduce`` returns both kinds alike. The run-cache tells them apart: before it
    runs a stage's command, DVC asks ``repo.stage_cache.restore``, which either restores
    the stage's outputs or raises (no entry); it is watched here for the duration of the
    call. Should a DVC release stop asking it, every reproduced stage counts as run.
    """
    asked: list[str] = []
    restored: list[str] = []
    cache = repo.stage_cache
    real_restore = cache.restore

    def restore(stage, *args, **kwargs):
        asked.append(stage.addressing)
        real_restore(stage, *args, **kwargs)  # RunCacheNotFoundError: no entry, it runs
        restored.append(stage.addressing)

    cache.restore = restore
    try:
        with dvc_errors() as logged:
            stages = repo.reproduce()
    except Exception as exc:
        stage = asked[-1] if asked else "?"
        raise failure(f"dvc repro failed in stage '{stage}'", exc, logged) from None
    finally:
        del cache.restore  # the class's method again
    names = [s.addressing for s in stages if _is_pipeline_stage(s)]
    return [n for n in names if n not in restored], [n for n in names if n in restored]


def in_sync(repo: Repo, remote: str) -> bool:
    """True when the remote already holds every output and tracked file of the workspace."""
    with dvc_errors() as logged:
        try:
            return repo.status(cloud=True) == {}
        except Exception as exc:
            raise failure(f"remote '{remote}'", exc, logged) from None


def push(repo: Repo, remote: str) -> int:
    """Push outputs and the run-cache; the number of files sent."""
    print(f"pushing outputs and the run-cache to remote '{remote}'", flush=True)
    with dvc_errors() as logged:
        try:
            sent = repo.push(run_cache=True)
        except Exception as exc:
            raise failure(f"remote '{remote}': push failed", exc, logged) from None
    print(f"{sent} file{'' if sent == 1 else 's'} pushed", flush=True)
    return sent


def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else "dvc"


def metrics_diff(base: str) -> str:
    """``dvc metrics diff BASE --md``: the Markdown table as DVC renders it."""
    proc = subprocess.run([_dvc(), "metrics", "diff", base, "--md"], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        return f"(no metrics diff against `{base}`: {why})\n"
    return proc.stdout.strip() + "\n" if proc.stdout.strip() else "No metric changed.\n"


def summary(outcome: Outcome, base: str) -> str:
    def names(items: list[str]) -> str:
        return ", ".join(f"`{n}`" for n in items) if items else "none"

    remote = f"`{outcome.remote}`" if outcome.remote else "none configured (pull/push skipped)"
    lines = [
        "## spinegrade retrain",
        "",
        f"- DVC remote: {remote}",
        f"- stale before repro: {names(outcome.stale)}",
        f"- re-run: {names(outcome.ran)}",
        f"- restored from the run-cache: {names(outcome.restored)}",
        f"- files pushed: {outcome.pushed}",
        "",
        f"### Metrics against `{base}`",
        "",
        metrics_diff(base),
    ]
    if COMPARE_TABLE.is_file():
        lines += ["### Backbones (reports/compare-backbones.md)", "", COMPARE_TABLE.read_text()]
    return "\n".join(lines).rstrip() + "\n"


def retrain(base: str, do_pull: bool = True, do_push: bool = True) -> Outcome:
    outcome = Outcome()
    with open_repo() as repo:
        remote = default_remote(repo)
        if remote is None:
            print(
                "no default DVC remote configured: running dvc repro only (pull and push skipped)",
                flush=True,
            )
        else:
            outcome.remote = f"{remote[0]} ({remote[1]})" if remote[1] else remote[0]
            if do_pull:
                pull(repo, outcome.remote)
        outcome.stale = stale_stages(repo)
        print(f"stale stages: {', '.join(outcome.stale) or 'none'}", flush=True)
        outcome.ran, outcome.restored = reproduce(repo)
        if outcome.ran and remote is not None:
            UNPUSHED.parent.mkdir(parents=True, exist_ok=True)
            UNPUSHED.write_text("".join(f"{n}\n" for n in outcome.ran))
        if remote is not None and do_push:
            # a run-cache push re-sends every run-cache entry even when nothing ran: push
            # only when a stage ran since the last push (its run-cache entry is new, even if
            # its outputs are not) or the remote lacks an output (a plain dvc repro ran here).
            if outcome.ran or UNPUSHED.is_file() or not in_sync(repo, outcome.remote):
                outcome.pushed = push(repo, outcome.remote)
                UNPUSHED.unlink(missing_ok=True)
            else:
                print(
                    f"nothing to push: no stage ran and remote '{outcome.remote}' is in sync",
                    flush=True,
                )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base",
        default=os.environ.get(BASE_ENV) or "HEAD",
        help=f"git ref to diff metrics against (default: ${BASE_ENV} or HEAD)",
    )
    parser.add_argument("--no-pull", action="store_true", help="skip pulling from the remote")
    parser.add_argument("--no-push", action="store_true", help="skip pushing to the remote")
    args = parser.parse_args(argv)
    try:
        with dvc_console():
            outcome = retrain(args.base, not args.no_pull, not args.no_push)
            text = summary(outcome, args.base)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n" + text)
    target = os.environ.get(SUMMARY_ENV)
    if target:
        with open(target, "a") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
