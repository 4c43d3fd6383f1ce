"""The import contract of the library's layers (pyproject.toml, [tool.importlinter]).

import-linter checks it over the real package; a copy of the package with one upward
import planted in it shows the check is not vacuous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    shutil.copy(REPO / "pyproject.toml", cwd / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layers_contract_is_kept(tmp_path):
    proc = lint_imports(REPO / "src", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "spinegrade", src / "spinegrade")
    vocab = src / "spinegrade" / "core" / "vocab.py"
    vocab.write_text(vocab.read_text() + "\nfrom spinegrade.tracking import store  # noqa\n")
    graders = src / "spinegrade" / "training" / "graders" / "fit.py"
    graders.write_text(graders.read_text() + "\nimport spinegrade.training.localizers.fit\n")
    proc = lint_imports(src, tmp_path)
    assert proc.returncode == 1
    assert "spinegrade.core.vocab -> spinegrade.tracking.store" in proc.stdout
    assert "spinegrade.training.graders.fit -> spinegrade.training.localizers.fit" in proc.stdout
