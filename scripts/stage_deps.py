"""Each DVC stage's code dependencies: the stage script and its import closure, module by module.

A stage re-runs when a module it executes changes, and for nothing else. Its code is the
script plus every ``spinegrade`` module it imports, directly or through other modules,
with the package ``__init__.py`` files Python runs on the way (imports inside functions
count: they run when the function does), plus the files a module reads at run time
(:data:`ASSETS`). Third-party code is pinned by requirements.txt, not listed here.

    python scripts/stage_deps.py           # print each stage's code deps
    python scripts/stage_deps.py --check   # exit 1, with a diff, if dvc.yaml differs
    python scripts/stage_deps.py --write   # rewrite the code deps in dvc.yaml

``--write`` replaces only the ``stages/`` and ``src/`` lines of each stage's ``deps:`` (the
data deps, comments and everything else stay as written). tests/test_stages.py runs the
check, so a new import without its ``deps:`` line fails the tests.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "spinegrade"

# Files (not modules) that a module reads at run time, repo-relative: a stage that imports
# the module depends on them too.
ASSETS = {
    "src/spinegrade/inference/page.py": ("src/spinegrade/inference/assets",),
    "src/spinegrade/service/app.py": ("src/spinegrade/service/assets",),
}

_CODE = ("stages/", "src/")


def _module_files(name: str, repo: Path) -> list[str]:
    """The files Python executes to import ``name`` (a dotted spinegrade name): each
    package's ``__init__.py`` on the way and the module itself; an attribute that is no
    module (``from spinegrade.x import f``) adds nothing."""
    parts = name.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        base = "src/" + "/".join(parts[:i])
        for rel in (base + "/__init__.py", base + ".py"):
            if (repo / rel).is_file():
                files.append(rel)
    return files


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``, whose imports never run."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path) -> list[str]:
    """The dotted spinegrade names ``path`` imports anywhere in its code (imports under
    ``if TYPE_CHECKING:`` excepted: they never run); for ``from a.b import c`` both
    ``a.b`` and ``a.b.c`` (which may be a module)."""
    names = []
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE or node.module.startswith(PACKAGE + "."):
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    return names


def closure(script: str | Path, repo: Path = REPO) -> set[str]:
    """Repo-relative paths of every spinegrade file ``script`` executes by importing,
    transitively, with the assets those modules read."""
    seen: set[str] = set()
    todo = [Path(script)]
    while todo:
        path = todo.pop()
        full = path if path.is_absolute() else repo / path
        for name in imported_names(full):
            for rel in _module_files(name, repo):
                if rel not in seen:
                    seen.add(rel)
                    todo.append(Path(rel))
    return seen | {a for m in seen for a in ASSETS.get(m, ())}


def stage_scripts(dvc_yaml: Path) -> dict[str, str]:
    """Stage name -> the script its command runs (``python stages/x.py ...``)."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        m = re.search(r"python (stages/\S+\.py)", stage["cmd"])
        if m is None:
            raise SystemExit(f"{dvc_yaml}: stage {name}: no 'python stages/....py' in its cmd")
        out[name] = m.group(1)
    return out


def code_deps(script: str, repo: Path = REPO) -> list[str]:
    """What a stage's ``deps:`` lists for its code: the script, then its closure, sorted."""
    return [script, *sorted(closure(script, repo))]


def rewrite(text: str, deps: dict[str, list[str]]) -> str:
    """``text`` (dvc.yaml) with each named stage's code deps replaced by ``deps[stage]``,
    placed where the first code dep stood; every other line kept as it is."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    in_deps = False
    placed = False
    for line in lines:
        if m := re.match(r"^  ([\w-]+):\s*$", line):
            stage, in_deps, placed = m.group(1), False, False
        elif re.match(r"^    deps:\s*$", line):
            in_deps = True
        elif in_deps and not re.match(r"^      - ", line):
            in_deps = False
        if in_deps and stage in deps and (m := re.match(r"^      - (\S+)\s*$", line)):
            if m.group(1).startswith(_CODE):
                if not placed:
                    out += [f"      - {d}\n" for d in deps[stage]]
                    placed = True
                continue
        out.append(line)
    return "".join(out)


def expected(dvc_yaml: Path, repo: Path = REPO) -> str:
    """dvc.yaml as it should read: every stage's code deps from its import closure."""
    deps = {name: code_deps(script, repo) for name, script in stage_scripts(dvc_yaml).items()}
    return rewrite(dvc_yaml.read_text(), deps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args(argv)
    current = args.dvc_yaml.read_text()
    wanted = expected(args.dvc_yaml)
    if args.write:
        if wanted != current:
            args.dvc_yaml.write_text(wanted)
            print(f"{args.dvc_yaml}: code deps rewritten")
        return 0
    if args.check:
        if wanted == current:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(True), wanted.splitlines(True), "dvc.yaml", "wanted"
            )
        )
        print(
            "dvc.yaml's code deps differ from the stages' imports: run "
            "python scripts/stage_deps.py --write",
            file=sys.stderr,
        )
        return 1
    for name, script in stage_scripts(args.dvc_yaml).items():
        deps = code_deps(script)
        print(f"{name}: {len(deps)} files")
        for d in deps:
            print(f"  {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
