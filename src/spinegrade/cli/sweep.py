"""A grid of DVC experiments: ``python -m spinegrade.cli.sweep -S KEY=V1,V2,... [-S ...]``.

Each ``-S`` takes DVC's sweep syntax (``key=1e-4,3e-4,1e-3``, ``key=range(2,8,2)``,
``key=choice(a,b)``); the grid is every combination, as ``dvc exp run --queue`` expands it.
Every key must be one of params.yaml's and every point of the grid must validate, so a
typo fails here instead of queueing experiments that change nothing. Each point is
queued with ``dvc exp run --queue`` under a name that says what it sets
(``lr-0.0003``, or ``{name}-lr-0.0003``), then the queue runs one experiment after another
(``dvc exp run --run-all``: ``--jobs`` at a time) and ``dvc exp show`` compares them.

Only the stages a swept param reaches run again: a backbone's recipe re-trains that
backbone's three jobs (the others come from the DVC cache), then evaluate, compare-backbones
and predict once per experiment. So reproduce the baseline first (``make repro``): an
experiment on a stale workspace re-runs the stale stages too. Each experiment's MLflow
parent run carries its name (``make ui``'s second link shows them side by side, with chart
and parallel-coordinates views).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from spinegrade.cli.preset import check_overrides
from spinegrade.core.entry import run, setup_logging, summary
from spinegrade.core.errors import ConfigError

# dvc exp show's dependency columns (paths: src/..., data/..., models): hashes, not results
DEPS = ".*/.*|^models$|^localizers$"

EPILOG = """\
examples:
  make sweep SET='train-per-condition.recipes.convnext_tiny.lr=1e-4,3e-4,1e-3'
  python -m spinegrade.cli.sweep -S 'train-per-condition.training.loss=weighted_ce,focal' \\
      -S 'train-per-condition.training.epochs=4,8' --name loss-epochs
  python -m spinegrade.cli.sweep -S 'evaluate.bootstrap_resamples=200,2000' --queue-only
      (then `dvc queue start`, `dvc queue status`, `dvc exp show`)"""


def grid(sets: list[str], params_path: Path) -> list[dict[str, object]]:
    """The sweep's points: per point, dotted key -> value (parsed as DVC parses ``-S``),
    each checked against ``params_path``.

    Raises:
        ConfigError: a ``-S`` that is not ``key=values``, a key params.yaml lacks, or a
            point whose params do not validate (the error names the point).
    """
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for item in sets:
        if "=" not in item or item.startswith(("=", "+", "~")) or ":" in item.split("=")[0]:
            raise ConfigError(f"-S {item!r}: expected key=value[,value...] (a key of params.yaml)")
    parser = OverridesParser.create()
    try:
        sweeps = get_hydra_sweeps({str(params_path): list(sets)})
        points = [
            {o.key_or_group: o.value() for o in parser.parse_overrides(s[str(params_path)])}
            for s in sweeps
        ]
    except HydraException as exc:
        raise ConfigError(f"-S {' '.join(sets)}: {exc}") from None
    for point in points:
        check_overrides(point, params_path, "-S " + ", ".join(f"{k}={v}" for k, v in point.items()))
    return points


def point_name(prefix: str, point: dict[str, object], swept: list[str]) -> str:
    """A DVC experiment name (a valid git ref part) for ``point``: ``prefix`` if any, then
    the swept keys' last parts and values, e.g. ``convnext-lr-0.0003``."""
    parts = [prefix] * bool(prefix) + [f"{k.rsplit('.', 1)[-1]}-{point[k]}" for k in swept]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("._-")


def queue_commands(points: list[dict[str, object]], prefix: str) -> list[list[str]]:
    """One ``dvc exp run --queue`` per point; all keys are set, the swept ones name it."""
    swept = [k for k in points[0] if len({repr(p[k]) for p in points}) > 1] or list(points[0])
    cmds = []
    for point in points:
        sets = [arg for k, v in point.items() for arg in ("-S", f"{k}={_dvc_value(v)}")]
        cmds.append(["dvc", "exp", "run", "--queue", "-n", point_name(prefix, point, swept), *sets])
    return cmds


def _dvc_value(value: object) -> str:
    """``value`` as ``-S`` writes it back (YAML flow style: 0.0003, [1, 2], focal)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _require_git_workspace() -> None:
    probe = subprocess.run(
        ["git", "rev-parse", "--verify", "HEAD"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise ConfigError(
            "DVC experiments need a git repository with a commit: run the sweep in a clone "
            "of the project (git rev-parse: " + (probe.stderr.strip() or "no HEAD") + ")"
        )
    if not Path("dvc.yaml").is_file():
        raise ConfigError("no dvc.yaml here: run the sweep from the project's root")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spinegrade.cli.sweep",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-S",
        "--set-param",
        dest="sets",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="a param and its values (repeat for a grid over several params)",
    )
    parser.add_argument(
        "-n",
        "--name",
        default="",
        help="prefix of the experiments' names, which then say what they set (lr-0.0003)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at a time")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--queue-only", action="store_true", help="queue them; `dvc queue start` runs them"
    )
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    code = 0

    def body() -> None:
        nonlocal code
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        if not args.params.is_file():
            raise ConfigError(f"{args.params}: params file not found")
        cmds = queue_commands(grid(args.sets, args.params), args.name)
        run_all = ["dvc", "exp", "run", "--run-all", "--jobs", str(args.jobs)]
        show = ["dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", DEPS]
        show += [] if sys.stdout.isatty() else ["--md"]  # a pipe: no table cut at 80 columns
        if args.print:
            import shlex

            for cmd in [*cmds, *([] if args.queue_only else [run_all, show])]:
                print(shlex.join(cmd))
            return
        _require_git_workspace()
        for cmd in cmds:
            if code := subprocess.call(cmd):
                return
        names = [cmd[cmd.index("-n") + 1] for cmd in cmds]
        if args.queue_only:
            queued = f"queued {len(cmds)} experiments ({', '.join(names)})"
            summary(f"{queued}: `dvc queue start` runs them")
            return
        code = subprocess.call(run_all)
        failed = _failed(names)
        subprocess.call(show)
        if failed:
            code = code or 1
            raise ConfigError(
                f"{len(failed)} of {len(names)} experiments failed: {', '.join(failed)} "
                f"(`dvc queue logs {failed[0]}` shows why)"
            )
        summary(
            f"{len(names)} experiments ran ({', '.join(names)}); `make ui` compares their "
            "MLflow parent runs (its second link)"
        )

    return run(body) or code


def _failed(names: list[str]) -> list[str]:
    """Which of the experiments ``names`` the DVC queue lists as failed."""
    from dvc.repo import Repo

    with Repo() as repo:
        failed = {done.entry.name for done in repo.experiments.celery_queue.iter_failed()}
    return [n for n in names if n in failed]


if __name__ == "__main__":
    sys.exit(main())
