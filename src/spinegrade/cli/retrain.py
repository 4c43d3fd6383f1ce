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

With no DVC remote configured, steps 1, 2 and 4 are skipped with a note (the synthetic
default needs none). A run interrupted between repro and push is simply run again: repro
then has nothing to do and push sends what is missing (.dvc/tmp/retrain-unpushed remembers
that stages ran since the last push, so their run-cache entries go too). Errors are one
line naming the remote or the object; the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from spinegrade.tracking.store import redact

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"

BASE_ENV = "RETRAIN_BASE"

COMPARE_TABLE = Path("reports/compare-backbones.md")

# Stages a retrain ran and has not pushed yet (it stopped before or during its push).
UNPUSHED = Path(".dvc/tmp/retrain-unpushed")

# dvc's own messages we report instead of its full output.
_RAN = re.compile(r"Running stage '([^']+)'")
_RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")
_PUSHED = re.compile(r"(\d+) files? pushed")


class RetrainError(RuntimeError):
    """A step failed; the message names the remote, object or stage at fault."""


@dataclass
class Outcome:
    remote: str | None = None
    stale: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    pushed: int = 0


def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else "dvc"


def dvc(*args: str, stream: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``dvc args``; with ``stream``, echo its output as it comes (and keep it)."""
    cmd = [_dvc(), *args]
    if not stream:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        lines = []
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as p:
            assert p.stdout is not None
            for line in p.stdout:
                print(line, end="", flush=True)
                lines.append(line)
        proc = subprocess.CompletedProcess(cmd, p.returncode, "".join(lines), "")
    if check and proc.returncode != 0:
        raise RetrainError(f"`dvc {' '.join(args)}` failed: {_dvc_error(proc)}")
    return proc


def _dvc_error(proc: subprocess.CompletedProcess) -> str:
    """dvc's ERROR lines (it prints no traceback without -v), else its last line."""
    text = (proc.stderr or "") + (proc.stdout or "")
    errors = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ERROR")]
    if errors:
        return " ".join(errors)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def default_remote() -> tuple[str, str] | None:
    """(name, url) of the default DVC remote, or None when there is none."""
    name = dvc("remote", "default", check=False).stdout.strip()
    if not name or "no default remote" in name.lower():
        return None
    for line in dvc("remote", "list").stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return name, redact(parts[1]) if len(parts) > 1 else ""
    return name, ""


def pointer_files() -> list[str]:
    """The ``*.dvc`` files of tracked data (committed or about to be)."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.dvc"],
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return sorted(set(proc.stdout.split()))
    return sorted(str(p) for p in Path().rglob("*.dvc") if ".dvc" not in p.parts[:-1])


_NODE = re.compile(r'^"([^"]+)";$')
_EDGE = re.compile(r'^"([^"]+)" -> "([^"]+)";$')


def dag() -> tuple[list[str], dict[str, set[str]]]:
    """(nodes in pipeline order, upstream -> downstream edges) of ``dvc dag``.

    Nodes are the stages (matrix and foreach stages expanded, ``train-per-condition@...``)
    and the ``*.dvc`` pointer files of tracked data.
    """
    if not Path("dvc.yaml").is_file():
        raise RetrainError(f"{Path.cwd()}: no dvc.yaml here; run from the project root")
    nodes: list[str] = []
    edges: dict[str, set[str]] = {}
    for line in dvc("dag", "--dot").stdout.splitlines():
        line = line.strip()
        if m := _EDGE.match(line):
            edges.setdefault(m.group(1), set()).add(m.group(2))
        elif m := _NODE.match(line):
            nodes.append(m.group(1))
    return nodes, edges


def stale_stages() -> list[str]:
    """The stages ``dvc repro`` will run: those ``dvc status`` reports as changed, and
    every stage downstream of them (status compares each stage with its recorded inputs
    only, so a stage whose upstream will change does not show there yet)."""
    changed = set(json.loads(dvc("status", "--json").stdout or "{}"))
    nodes, edges = dag()
    stale, todo = set(), [n for n in nodes if n in changed]
    while todo:
        node = todo.pop()
        if node not in stale:
            stale.add(node)
            todo.extend(edges.get(node, ()))
    return [n for n in nodes if n in stale and not n.endswith(".dvc")]


def pull(remote: str) -> None:
    pointers = pointer_files()
    if pointers:
        print(f"pulling the tracked data ({', '.join(pointers)}) from remote '{remote}'")
        try:
            dvc("pull", *pointers, stream=True)
        except RetrainError as exc:
            raise RetrainError(
                f"remote '{remote}': could not pull the tracked data: {exc}"
            ) from None
    print(f"pulling pipeline outputs and the run-cache from remote '{remote}'")
    try:  # --allow-missing: an output nobody pushed yet is rebuilt, not an error
        dvc("pull", "--run-cache", "--allow-missing", stream=True)
    except RetrainError as exc:
        raise RetrainError(f"remote '{remote}': could not pull: {exc}") from None


def in_sync(remote: str) -> bool:
    """True when the remote already holds every output and tracked file of the workspace."""
    try:
        return json.loads(dvc("status", "--cloud", "--json").stdout or "{}") == {}
    except RetrainError as exc:
        raise RetrainError(f"remote '{remote}': {exc}") from None


def push(remote: str) -> int:
    """Push outputs and the run-cache; the number of files sent."""
    print(f"pushing outputs and the run-cache to remote '{remote}'")
    try:
        proc = dvc("push", "--run-cache", stream=True)
    except RetrainError as exc:
        raise RetrainError(f"remote '{remote}': push failed: {exc}") from None
    return sum(int(n) for n in _PUSHED.findall(proc.stdout))


def metrics_diff(base: str) -> str:
    proc = dvc("metrics", "diff", base, "--md", check=False)
    if proc.returncode != 0:
        return f"(no metrics diff against `{base}`: {_dvc_error(proc)})\n"
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
    remote = default_remote()
    if remote is None:
        print("no default DVC remote configured: running dvc repro only (pull and push skipped)")
    else:
        outcome.remote = f"{remote[0]} ({remote[1]})" if remote[1] else remote[0]
        if do_pull:
            pull(outcome.remote)
    outcome.stale = stale_stages()
    print(f"stale stages: {', '.join(outcome.stale) or 'none'}", flush=True)
    proc = dvc("repro", stream=True, check=False)
    outcome.ran = _RAN.findall(proc.stdout)
    outcome.restored = _RESTORED.findall(proc.stdout)
    if proc.returncode != 0:
        ran = outcome.ran[-1] if outcome.ran else "?"
        raise RetrainError(f"dvc repro failed in stage '{ran}': {_dvc_error(proc)}")
    if outcome.ran and remote is not None:
        UNPUSHED.parent.mkdir(parents=True, exist_ok=True)
        UNPUSHED.write_text("".join(f"{n}\n" for n in outcome.ran))
    if remote is not None and do_push:
        # dvc push --run-cache re-sends every run-cache entry even when nothing ran: push
        # only when a stage ran since the last push (its run-cache entry is new, even if its
        # outputs are not) or the remote lacks an output (a plain dvc repro ran here).
        if outcome.ran or UNPUSHED.is_file() or not in_sync(outcome.remote):
            outcome.pushed = push(outcome.remote)
            UNPUSHED.unlink(missing_ok=True)
        else:
            print(f"nothing to push: no stage ran and remote '{outcome.remote}' is in sync")
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
