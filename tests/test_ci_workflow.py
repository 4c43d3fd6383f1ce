"""The GitHub Actions test workflow (.github/workflows/ci.yml).

Checked here, without GitHub, with the linters and helpers of tests/test_workflow.py (which
checks retrain.yml the same way):
- it is a valid workflow (check-jsonschema's bundled GitHub-workflow schema) and zizmor
  (offline) finds nothing; planted mistakes show both checks catch what they claim;
- it runs on every push and every pull request, with no filter;
- it runs `make lint` and `make test`, the command .ci/run runs, and both targets exist;
- the test suite gets what it needs: the PostgreSQL server tests/test_mlflow_server.py
  connects to (a postgres service with trust auth on 127.0.0.1:5432), a chromium at
  $CHROMIUM (read by the Makefile and by spinegrade.cli.browser, and checked by a step that
  is run here as GitHub runs it), Python 3.11 with pip's cache;
- its safety properties: a read-only token, no credentials left in the checkout, superseded
  pull-request runs cancelled, a time limit.
"""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
from test_workflow import (
    REPO,
    check_schema,
    clean_env,
    load,
    mutate,
    push_starts_run,
    run_step,
    zizmor,
)

from spinegrade.cli.browser import chromium_path

CI = REPO / ".github" / "workflows" / "ci.yml"


@cache
def ci_text() -> str:
    assert CI.is_file(), f"missing {CI.relative_to(REPO)}"
    return CI.read_text()


def ci() -> dict:
    return load(ci_text())


def job() -> dict:
    jobs = ci()["jobs"]
    assert list(jobs) == ["test"], f"one job expected, found {list(jobs)}"
    return jobs["test"]


def steps() -> list[dict]:
    return job()["steps"]


def step(step_id: str) -> dict:
    return next(s for s in steps() if s.get("id") == step_id)


def write_ci(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".github" / "workflows" / "ci.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the linters -------------------------------------------------------------------------


def test_the_ci_workflow_matches_the_github_workflow_schema():
    proc = check_schema(CI)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_ci_workflow(tmp_path):
    broken = mutate(ci_text(), "      contents: read  #", "      contents: readonly  #")
    proc = check_schema(write_ci(tmp_path, broken))
    assert proc.returncode != 0, proc.stdout
    assert "permissions" in proc.stdout + proc.stderr


def test_zizmor_finds_nothing_in_the_ci_workflow():
    proc = zizmor(CI)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("old", "new", "audit"),
    [
        # A commit message pasted into a script is code anyone who pushes can write.
        (
            "        run: make lint\n",
            '        run: |\n          echo "${{ github.event.head_commit.message }}"\n'
            "          make lint\n",
            "template-injection",
        ),
        # The token left in .git/config (persist-credentials is the checkout's only input).
        ("        with:\n          persist-credentials: false\n", "", "artipacked"),
        (
            "    permissions:\n      contents: read  # check out the code\n",
            "    permissions: write-all\n",
            "excessive-permissions",
        ),
        (
            "actions/setup-python@v6  # zizmor: ignore[unpinned-uses]",
            "actions/setup-python@v6",
            "unpinned-uses",
        ),
        (
            "image: postgres:15  # zizmor: ignore[unpinned-images]",
            "image: postgres",
            "unpinned-images",
        ),
    ],
)
def test_zizmor_catches_planted_mistakes_in_the_ci_workflow(tmp_path, old, new, audit):
    proc = zizmor(write_ci(tmp_path, mutate(ci_text(), old, new)))
    assert proc.returncode != 0, proc.stdout
    assert audit in proc.stdout, proc.stdout


# --- when it runs, and what ----------------------------------------------------------------


def test_it_runs_on_every_push_and_every_pull_request():
    on = ci()["on"]
    assert set(on) == {"push", "pull_request"}
    # No branch, tag or path filter: every push and every pull request.
    assert on["push"] is None and on["pull_request"] is None, on
    wf = {"on": {"push": {}}}
    for branch in ["main", "feature/x", "retrain/main/1"]:
        for changed in (["README.md"], ["tests/test_ci_workflow.py"], ["dvc.lock"]):
            assert push_starts_run(wf, changed, branch), (branch, changed)


def ci_run_command() -> str:
    """The command .ci/run runs (its last line that is no comment, `set` or `cd`)."""
    lines = [
        ln.strip()
        for ln in (REPO / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert lines, ".ci/run runs nothing?"
    return lines[-1]


def test_it_runs_make_lint_then_make_test_the_command_of_ci_run():
    command = ci_run_command()
    assert command == "make test", "the README's test command changed: update ci.yml"
    assert step("lint")["run"].strip() == "make lint"
    assert step("test")["run"].strip() == command
    ids = [s.get("id") for s in steps()]
    assert ids.index("chromium") < ids.index("lint") < ids.index("test")
    assert ids[-1] == "test"
    # The tests run after a lint failure too, but not after a failed set-up.
    condition = step("test")["if"]
    assert "!cancelled()" in condition and "steps.chromium.outcome == 'success'" in condition
    for name in ("lint", "chromium"):
        assert "if" not in step(name), name


@pytest.mark.parametrize(
    ("target", "expected"),
    [("lint", ["ruff check", "lint-imports"]), ("test", ["-m pytest"])],
)
def test_the_make_targets_exist(target, expected):
    """Dry run (nothing runs): the Makefile has the targets the workflow runs."""
    proc = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in expected:
        assert text in proc.stdout, (target, text, proc.stdout)


# --- what the test suite needs -------------------------------------------------------------


def pg_admin_default() -> str:
    """The admin URI tests/test_mlflow_server.py connects with when SPINEGRADE_TEST_PG is
    unset (read from its source: importing it would read this machine's variable)."""
    source = (REPO / "tests" / "test_mlflow_server.py").read_text()
    m = re.search(r'os\.environ\.get\(\s*"SPINEGRADE_TEST_PG",\s*"([^"]+)"\s*\)', source)
    assert m, "tests/test_mlflow_server.py no longer reads SPINEGRADE_TEST_PG: update this test"
    return m.group(1)


def test_a_postgres_service_as_the_server_tests_expect():
    services = job()["services"]
    assert list(services) == ["postgres"]
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(@sha256:[0-9a-f]{64})?", pg["image"]), pg["image"]
    # Trust auth: the tests connect without a password, and test_mlflow_server's
    # wrong-backend test expects a wrong password to be ignored ("does not exist").
    assert pg["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}
    # Published on the runner's loopback only, at the port the tests use.
    assert pg["ports"] == ["127.0.0.1:5432:5432"]
    options = pg["options"]
    assert "--health-cmd" in options and "pg_isready" in options
    # The URI the tests get is the one they would use anyway, and it reaches this service.
    uri = job()["env"]["SPINEGRADE_TEST_PG"]
    assert uri == pg_admin_default()
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == "postgresql"
    assert (parts.hostname, parts.port) == ("127.0.0.1", 5432)
    assert parts.username == "postgres" and parts.password is None
    # The database is up before the first step: no step has to wait for it.
    assert not any("pg_isready" in s.get("run", "") for s in steps())


def test_the_browser_path_is_what_the_makefile_and_the_browser_code_read(tmp_path, monkeypatch):
    chromium = job()["env"]["CHROMIUM"]
    assert chromium.startswith("/"), chromium
    # The Makefile's `chromium` target (run by `make test`) takes the path from the
    # environment. Printed by an added rule: nothing else of the Makefile runs.
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "--eval",
            "print-chromium: ; @echo $(CHROMIUM)",
            "print-chromium",
        ],
        cwd=REPO,
        env=clean_env(tmp_path, CHROMIUM=chromium),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == chromium
    # ... and so does the code that launches it (browser tests, screenshot scripts).
    monkeypatch.setenv("CHROMIUM", chromium)
    assert chromium_path() == Path(chromium)


def test_the_chromium_step_checks_the_browser_before_anything_is_installed(tmp_path):
    script = step("chromium")["run"]
    work = tmp_path / "work"
    work.mkdir()
    browser = tmp_path / "google-chrome"
    browser.write_text('#!/bin/sh\necho "Google Chrome 1.2.3.4 $*"\n')
    browser.chmod(0o755)
    proc = run_step(script, work, clean_env(tmp_path, CHROMIUM=str(browser)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Google Chrome 1.2.3.4 --version" in proc.stdout
    # No browser: the job stops here, with an error that says what to do.
    missing = tmp_path / "no-such-browser"
    proc = run_step(script, work, clean_env(tmp_path, CHROMIUM=str(missing)))
    assert proc.returncode != 0
    assert "::error::" in proc.stdout and str(missing) in proc.stdout
    assert "CHROMIUM" in proc.stdout


def test_python_3_11_with_pips_cache():
    setup = next(s for s in steps() if s.get("uses", "").startswith("actions/setup-python@"))
    w = setup["with"]
    assert w["python-version"] == "3.11"
    assert w["cache"] == "pip"
    paths = w["cache-dependency-path"].split()
    assert paths == ["requirements.txt", "requirements-dev.txt"]
    for p in paths:
        assert (REPO / p).is_file(), p


# --- the workflow's safety properties ----------------------------------------------------


def test_least_privilege_cancelled_pr_runs_and_a_time_limit():
    wf = ci()
    assert wf["permissions"] == {}, "nothing by default"
    assert job()["permissions"] == {"contents": "read"}
    conc = wf["concurrency"]
    assert "github.ref" in conc["group"]
    assert conc["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    assert 0 < job()["timeout-minutes"] <= 120
    assert job()["runs-on"] == "ubuntu-latest"
    checkout = steps()[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["persist-credentials"] is False
    # GitHub's own actions only, each on a major tag with the reason-giving ignore comment
    # (see the header of retrain.yml and ci.yml).
    uses = re.findall(r"^\s*(?:- )?uses: (\S+)(.*)$", ci_text(), re.M)
    assert uses
    for action, rest in uses:
        assert re.fullmatch(r"actions/[a-z-]+@v\d+", action), action
        assert rest.strip() == "# zizmor: ignore[unpinned-uses]", action
    # No secrets: the tests need none.
    assert "secrets." not in ci_text()
