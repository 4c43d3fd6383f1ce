"""The GitHub Actions test workflow (.github/workflows/ci.yml).

Checked here, without GitHub, with the linters and helpers of tests/test_workflow.py (which
checks retrain.yml the same way):
- it is a valid workflow (check-jsonschema's bundled GitHub-workflow schema) and zizmor
  (offline) finds nothing; planted mistakes show both checks catch what they claim;
- it runs on every push and every pull request, with no filter;
- it runs `make lint` and `make test`, the command .ci/run runs, and both targets exist;
- it runs in a Debian 12 container with Python 3.11 (python:3.11-bookworm), like the project
  machines, and the test suite gets what it needs there: the PostgreSQL server
  tests/test_mlflow_server.py connects to (a postgres service with trust auth, reached by its
  service name through SPINEGRADE_TEST_PG, which every PostgreSQL URI of the tests honours),
  Debian's chromium installed with apt-get at the path the Makefile and
  scripts/browser.py uses by default, git allowed on a checkout it does not own, and pip's
  download cache keyed on both requirements files; the shell steps are run here as GitHub
  runs them, with stand-ins for apt-get and chromium;
- its safety properties: a read-only token, no credentials left in the checkout, superseded
  pull-request runs cancelled, a time limit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from functools import cache
from pathlib import Path

import pytest
from browser import chromium_path
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
        # The same in a script of this workflow's own: the chromium step.
        (
            "          chromium --version\n",
            '          echo "${{ github.event.pull_request.title }}"\n',
            "template-injection",
        ),
        (
            "actions/cache@v5  # zizmor: ignore[unpinned-uses]",
            "actions/cache@v5",
            "unpinned-uses",
        ),
        (
            "image: postgres:15  # zizmor: ignore[unpinned-images]",
            "image: postgres",
            "unpinned-images",
        ),
        (
            "image: python:3.11-bookworm  # zizmor: ignore[unpinned-images]",
            "image: python",
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
    assert ids.index("git") < ids.index("chromium") < ids.index("lint") < ids.index("test")
    assert ids[-1] == "test"
    # The tests run after a lint failure too, but not after a failed set-up (a failed git
    # step skips the chromium step, whose outcome is then not success either).
    condition = step("test")["if"]
    assert "!cancelled()" in condition and "steps.chromium.outcome == 'success'" in condition
    for name in ("git", "chromium", "lint"):
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


# --- where it runs, and what the test suite needs ---------------------------------------


def test_it_runs_in_a_debian_12_container_with_python_3_11():
    container = job()["container"]
    image = container["image"]
    # The official Python image on Debian 12 (bookworm), optionally pinned to a patch
    # release and a digest: the Debian and the Python of the project machines.
    assert re.fullmatch(r"python:3\.11(\.\d+)?-bookworm(@sha256:[0-9a-f]{64})?", image), image
    # Docker's 64 MB /dev/shm is too small for chromium and the data loader workers.
    m = re.search(r"--shm-size[= ](\d+)([gm])\b", container["options"])
    assert m and int(m.group(1)) * (1024 if m.group(2) == "g" else 1) >= 1024, container
    # No setup-python: it cannot install into a container, and the image has Python 3.11.
    assert not any(s.get("uses", "").startswith("actions/setup-python@") for s in steps())
    # GitHub-hosted Linux runner (container jobs need Linux and Docker).
    assert job()["runs-on"] == "ubuntu-latest"


def pg_admin_default() -> str:
    """The admin URI the tests (helpers.PG_ADMIN) connect with when SPINEGRADE_TEST_PG is
    unset (read from its source: importing it would read this machine's variable)."""
    source = (REPO / "tests" / "helpers.py").read_text()
    m = re.search(r'os\.environ\.get\(\s*"SPINEGRADE_TEST_PG",\s*"([^"]+)"\s*\)', source)
    assert m, "tests/helpers.py no longer reads SPINEGRADE_TEST_PG: update this test"
    return m.group(1)


def test_a_postgres_service_reached_by_its_name_as_the_server_tests_expect():
    services = job()["services"]
    assert list(services) == ["postgres"]
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(@sha256:[0-9a-f]{64})?", pg["image"]), pg["image"]
    # Trust auth: the tests connect without a password, and test_mlflow_server's
    # wrong-backend test expects a wrong password to be ignored ("does not exist").
    assert pg["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}
    # A container job reaches its services on the job's Docker network: nothing is
    # published on the runner (a trust-auth server must not listen anywhere else).
    assert "ports" not in pg
    assert "container" in job(), "a service name resolves only from a container job"
    options = pg["options"]
    assert "--health-cmd" in options and "pg_isready" in options
    # The URI the tests get is their default one with the service's name as host.
    uri = job()["env"]["SPINEGRADE_TEST_PG"]
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == "postgresql"
    assert (parts.hostname, parts.port) == ("postgres", 5432)
    assert parts.username == "postgres" and parts.password is None
    default = urllib.parse.urlsplit(pg_admin_default())
    assert (default.hostname, default.port) == ("127.0.0.1", 5432)
    assert parts._replace(netloc="") == default._replace(netloc="")
    assert default.username == parts.username
    # The database is up before the first step: no step has to wait for it.
    assert not any("pg_isready" in s.get("run", "") for s in steps())


# A PostgreSQL URI naming the local default server (port 5432 or none): in CI nothing
# listens there, so each must be the default of SPINEGRADE_TEST_PG, overridden by the job.
LOCAL_PG = re.compile(
    r"postgres(?:ql)?(?:\+\w+)?://[^\s\"'/]*@(?:127\.0\.0\.1|localhost)(?::5432)?/"
)
HONOURED = re.compile(r'os\.environ\.get\(\s*"SPINEGRADE_TEST_PG",\s*"[^"]+"\s*\)')


def local_pg_uses(text: str) -> list[str]:
    """The lines of `text` that name the local PostgreSQL server other than as the default
    of SPINEGRADE_TEST_PG."""
    return [ln.strip() for ln in HONOURED.sub("", text).splitlines() if LOCAL_PG.search(ln)]


def test_every_postgresql_use_of_the_tests_honours_spinegrade_test_pg():
    files = sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "src").rglob("*.py"))
    found = {
        str(path.relative_to(REPO)): uses
        for path in files
        if path.name != "test_ci_workflow.py" and (uses := local_pg_uses(path.read_text()))
    }
    assert found == {}, "these connect to 127.0.0.1:5432 whatever SPINEGRADE_TEST_PG says"
    assert HONOURED.search((REPO / "tests" / "helpers.py").read_text())
    # The check finds what it looks for.
    assert local_pg_uses('psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres")')
    assert local_pg_uses('URI = "postgresql+psycopg://postgres@localhost/db"')
    assert not local_pg_uses('os.environ.get("SPINEGRADE_TEST_PG", "postgresql://u@127.0.0.1/p")')
    assert not local_pg_uses('closed = f"postgresql://u:p@127.0.0.1:{free_port()}/mlflow"')


def fake_tools(tmp_path: Path, **scripts: str) -> Path:
    """A directory of executables, each a shell script body, to put first on PATH."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_the_chromium_step_installs_debians_chromium_with_apt_get(tmp_path):
    script = step("chromium")["run"]
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "apt-get.log"
    bin_dir = fake_tools(
        tmp_path,
        **{
            "apt-get": f'echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {log}',
            "chromium": 'echo "Chromium 1.2.3.4 built on Debian GNU/Linux 12 (bookworm) $*"',
        },
    )
    path = f"{bin_dir}:{os.environ['PATH']}"
    proc = run_step(script, work, clean_env(tmp_path, PATH=path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    # The package lists first (the image ships none), then the package, unattended.
    assert [c.split()[1] for c in calls] == ["update", "install"], calls
    install = calls[1].split()
    assert install[0] == "DEBIAN_FRONTEND=noninteractive"
    assert "-y" in install and install[-1] == "chromium", install
    assert "Chromium 1.2.3.4 built on Debian" in proc.stdout and "--version" in proc.stdout
    # The same command the Makefile's `chromium` target runs as root on the project machines.
    makefile = subprocess.run(
        ["make", "-n", "chromium", "CHROMIUM=/nonexistent/chromium"],
        cwd=REPO,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert makefile.returncode == 0, makefile.stdout + makefile.stderr
    command = " ".join(install[1:])
    assert f"DEBIAN_FRONTEND=noninteractive apt-get {command}" in makefile.stdout, makefile.stdout
    # A failed install fails the step (and so skips make test), before chromium is run.
    log.unlink()
    fake_tools(tmp_path, **{"apt-get": f'echo "$*" >> {log}; [ "$1" = update ]'})
    proc = run_step(script, work, clean_env(tmp_path, PATH=path))
    assert proc.returncode != 0
    assert "Chromium 1.2.3.4" not in proc.stdout


def test_the_browser_is_at_the_default_path_of_the_makefile_and_the_browser_code(
    tmp_path, monkeypatch
):
    # No override anywhere: Debian's package puts chromium at /usr/bin/chromium, on the PATH.
    assert "CHROMIUM" not in ci_text()
    # The Makefile's `chromium` target (run by `make test`) checks /usr/bin/chromium when
    # CHROMIUM is unset. Printed by an added rule: nothing else of the Makefile runs.
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
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "/usr/bin/chromium"
    # ... and, once the step has installed it, does nothing more (no second apt-get).
    installed = fake_tools(tmp_path, chromium="exit 0") / "chromium"
    proc = subprocess.run(
        ["make", "-s", "chromium", f"CHROMIUM={installed}"],
        cwd=REPO,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    # The code that launches it (browser tests, screenshot scripts): `chromium` on the PATH,
    # else /usr/bin/chromium; on Debian both are the package's binary.
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert chromium_path() == Path("/usr/bin/chromium")


def test_the_git_step_lets_git_use_a_checkout_owned_by_another_user(tmp_path):
    script = step("git")["run"]
    checkout = tmp_path / "workspace"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True, capture_output=True)
    env = clean_env(tmp_path, GITHUB_WORKSPACE=str(checkout))
    env.pop("GIT_CONFIG_GLOBAL")  # the step writes the global config, in $HOME

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(checkout), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    owner = None
    if os.geteuid() == 0:  # as in the container: root, the checkout owned by the runner's user
        owner = 1001
        for path in [checkout, *checkout.rglob("*")]:
            os.chown(path, owner, owner, follow_symlinks=False)
        refused = git("rev-parse", "--git-dir")
        assert refused.returncode != 0 and "dubious ownership" in refused.stderr, refused
    proc = run_step(script, tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = git("config", "--global", "--get-all", "safe.directory").stdout.split()
    assert listed == [str(checkout)]
    if owner is not None:
        assert git("rev-parse", "--git-dir").returncode == 0


def test_pips_download_cache_is_kept_keyed_on_both_requirements_files(tmp_path):
    cache_steps = [s for s in steps() if s.get("uses", "").startswith("actions/cache@")]
    assert len(cache_steps) == 1
    w = cache_steps[0]["with"]
    # The cached folder is the one pip uses in the job (PIP_CACHE_DIR, not a HOME-relative
    # default: a container job's HOME is the runner's /github/home).
    cache_dir = job()["env"]["PIP_CACHE_DIR"]
    assert cache_dir.startswith("/"), cache_dir
    assert w["path"] in (cache_dir, "${{ env.PIP_CACHE_DIR }}"), w["path"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"],
        env=clean_env(tmp_path, PIP_CACHE_DIR=str(tmp_path / "pip-cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "pip-cache")
    # A new key whenever either requirements file changes; an older cache is restored then.
    m = re.fullmatch(r"(\S+-)\$\{\{ hashFiles\(([^)]*)\) \}\}", w["key"])
    assert m, w["key"]
    paths = [p.strip().strip("'") for p in m.group(2).split(",")]
    assert paths == ["requirements.txt", "requirements-dev.txt"]
    for p in paths:
        assert (REPO / p).is_file(), p
    assert w["restore-keys"].split() == [m.group(1)]
    # Restored before make installs anything (make lint builds .venv/).
    ids = [s.get("id") for s in steps()]
    assert steps().index(cache_steps[0]) < ids.index("lint")


# --- the workflow's safety properties ----------------------------------------------------


def test_least_privilege_cancelled_pr_runs_and_a_time_limit():
    wf = ci()
    assert wf["permissions"] == {}, "nothing by default"
    assert job()["permissions"] == {"contents": "read"}
    conc = wf["concurrency"]
    assert "github.ref" in conc["group"]
    assert conc["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    assert 0 < job()["timeout-minutes"] <= 120
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
