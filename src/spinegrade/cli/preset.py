"""Run a DVC experiment with a named set of params: ``python -m spinegrade.cli.preset FILE``.

FILE is a partial params file (presets/gpu-rsna.yaml: the GPU preset for the real dataset).
Every key in it must exist in params.yaml, and params.yaml with the preset applied must be
valid; then ``dvc exp run --name <preset> -S key=value ...`` runs with every key of it, so
the workspace's params.yaml stays as committed and the experiment is one row in
``dvc exp show`` (and its runs in MLflow). ``--print`` shows the command instead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml

from spinegrade.core.config.base import flatten
from spinegrade.core.config.params import load_params
from spinegrade.core.entry import run, setup_logging
from spinegrade.core.errors import ConfigError


def _merge(base: dict, override: Mapping) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def overrides(preset_path: Path, params_path: Path) -> dict[str, object]:
    """The preset's ``dotted.key: value`` overrides, checked against ``params_path``.

    Raises:
        ConfigError: a key params.yaml does not have (``dvc exp run -S`` would add it
            silently), or params.yaml with the preset applied does not validate.
    """
    if not preset_path.is_file():
        raise ConfigError(f"preset not found: {preset_path}")
    preset = yaml.safe_load(preset_path.read_text()) or {}
    if not isinstance(preset, Mapping):
        raise ConfigError(f"{preset_path}: expected a mapping of params sections")
    return check_overrides(flatten(preset), params_path, str(preset_path))


def check_overrides(flat: Mapping[str, object], params_path: Path, source: str) -> dict:
    """``flat`` (dotted key -> value, as ``dvc exp run -S`` sets them) if every key is one
    of ``params_path``'s and the params with them applied are valid.

    Raises:
        ConfigError: naming ``source`` and the unknown key, or what does not validate.
    """
    base = yaml.safe_load(params_path.read_text()) or {}
    known = flatten(base)
    for key in flat:
        if key in known or any(k.startswith(key + ".") for k in known):
            continue
        parent = key.rsplit(".", 1)[0]
        if parent in known and isinstance(known[parent], Mapping):  # e.g. empty model_kwargs
            continue
        raise ConfigError(f"{source}: {key} is not a key of {params_path}")
    nested: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "params.yaml"
        merged.write_text(yaml.safe_dump(_merge(base, nested), sort_keys=False))
        try:
            load_params(merged)
        except ConfigError as exc:
            reason = str(exc).replace(f"{merged}: ", "")
            raise ConfigError(f"{source} applied to {params_path}: {reason}") from None
    return dict(flat)


def command(preset_path: Path, params_path: Path, extra: list[str]) -> list[str]:
    """``dvc exp run --name <preset name> -S key=value ...`` for the preset."""
    cmd = ["dvc", "exp", "run", "--name", preset_path.stem]
    for key, value in overrides(preset_path, params_path).items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        cmd += ["-S", f"{key}={text}"]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spinegrade.cli.preset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("preset", type=Path, help="partial params file, e.g. presets/gpu-rsna.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--print", action="store_true", help="print the command, do not run it")
    parser.epilog = "More `dvc exp run` arguments go after --, e.g. -- -S engine.nproc_per_node=4"
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.dvc_args = extra
    setup_logging()
    code = 0

    def body() -> None:
        nonlocal code
        cmd = command(args.preset, args.params, args.dvc_args)
        if args.print:
            print(shlex.join(cmd))
            return
        code = subprocess.call(cmd)

    return run(body) or code


if __name__ == "__main__":
    sys.exit(main())
