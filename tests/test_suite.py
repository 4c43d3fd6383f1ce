"""The test suite's own contract: a test that needs PostgreSQL stops the run at once, in one
line saying how to start it, when PostgreSQL is not there (never a skip), with or without
pytest-xdist; the quick tier's expression leaves out every test that needs more than the
package."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, free_port

pytestmark = pytest.mark.slow  # starts pytest itself (10 to 20 s each)

QUICK = re.search(r"^QUICK := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1)


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        # not this run's PYTEST_XDIST_WORKER & co: the inner run is a run of its own
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "workers", [[], ["-n", "2", "--dist", "loadscope"]], ids=["plain", "xdist"]
)
def test_without_postgresql_the_run_stops_at_once_naming_what_to_start(workers):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    proc = _pytest(
        *workers,
        "tests/test_mlflow_server.py",
        "-k",
        "wrong_backend_uri",
        SPINEGRADE_TEST_PG=closed,
    )
    assert proc.returncode == 4, proc.stdout[-2000:]
    out = proc.stdout + proc.stderr
    assert f"PostgreSQL is not reachable at {closed}" in out
    assert "pg_ctlcluster" in out and "SPINEGRADE_TEST_PG" in out
    assert not re.search(r"^=+ .*\d+ (passed|failed|error)", out, re.M)  # no test ran
    assert "INTERNALERROR" not in out


def test_the_quick_tier_needs_nothing_but_the_package():
    """`make test-quick`'s expression selects no test marked as needing a server, a browser,
    PostgreSQL, dvc or a GPU, nor a slow one; and it still selects tests of every package."""
    proc = _pytest("--collect-only", "-q", "-m", QUICK)
    assert proc.returncode == 0, proc.stdout[-2000:]
    quick = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    marked = _pytest(
        "--collect-only", "-q", "-m", "slow or dvc or server or chromium or postgres or gpu"
    )
    heavy = {line for line in marked.stdout.splitlines() if "::" in line}
    assert heavy and not heavy & {line for line in proc.stdout.splitlines() if "::" in line}
    packages = {p.name for p in (REPO / "src" / "spinegrade").iterdir() if p.is_dir()}
    packages -= {"__pycache__"}
    covered = {
        pkg for pkg in packages for f in quick if (REPO / f).read_text().count(f"spinegrade.{pkg}")
    }
    assert covered == packages, packages - covered
