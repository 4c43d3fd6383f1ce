"""The GitHub Actions retraining workflow (.github/workflows/retrain.yml).

Checked here, without GitHub:
- it is a valid workflow (check-jsonschema's bundled GitHub-workflow schema) and passes a
  workflow linter (zizmor, offline); planted mistakes show both checks catch what they claim;
- its push filters, matched the way GitHub documents its filter patterns, against the
  repository's real file list: a change to what the pipeline reads starts a run, a change to
  dvc.lock, reports/, docs or the README alone does not (so its own commits never start one);
- its safety properties: runs of one branch queue instead of overlapping, minimal token
  permissions, [skip ci] commits, no credentials left in the checkout;
- its shell steps, run here as GitHub runs them (bash -eo pipefail) against a local git
  remote: the change check, the secret handling around `make retrain`, the commit pushed back
  to the branch, the pull request branch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "retrain.yml"
BIN = Path(sys.executable).parent

# The linters, with the versions this was written against (pinned in requirements-dev.txt).
TOOLS = {
    "zizmor": "zizmor==1.32.0",
    "check-jsonschema": "check-jsonschema==0.39.0",
}


def tool(name: str) -> str:
    """The linter's executable in this virtualenv (or on PATH); fail, never skip, without it."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} is not installed: `{BIN / 'python'} -m pip install {TOOLS[name]}` "
        "(it belongs in requirements-dev.txt; `make test` installs it)"
    )


def load(text: str) -> dict:
    wf = yaml.safe_load(text)
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in wf:
        wf["on"] = wf.pop(True)
    return wf


@cache
def workflow_text() -> str:
    assert WORKFLOW.is_file(), f"missing {WORKFLOW.relative_to(REPO)}"
    return WORKFLOW.read_text()


def workflow() -> dict:
    return load(workflow_text())


def mutate(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, f"the workflow no longer contains {old!r}: update this test"
    return text.replace(old, new, 1)


def write_workflow(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".github" / "workflows" / "retrain.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- GitHub's filter patterns ----------------------------------------------------------------
# As documented in "Workflow syntax for GitHub Actions", section "Filter pattern cheat sheet":
# `*` matches any characters but `/`; `**` any characters, `/` included (and `**/` zero or
# more whole directories, so `**/README.md` matches `README.md`); `?` zero or one and `+` one
# or more of the preceding character; `[...]` one character of a set or a-z/A-Z/0-9 ranges;
# `\` escapes; a leading `!` negates. A pattern matches the whole path (or branch name).
# Patterns are applied in order: a later matching `!` pattern excludes the path again, a
# later matching positive pattern re-includes it; a push runs the workflow when at least one
# changed path ends up included, and its branch passes the branch filter the same way.


@cache
def filter_regex(pattern: str) -> re.Pattern[str]:
    atoms: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            atoms.append(re.escape(pattern[i + 1]))
            i += 2
        elif pattern.startswith("**/", i):
            atoms.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            atoms.append(".*")
            i += 2
        elif c == "*":
            atoms.append("[^/]*")
            i += 1
        elif c in "?+" and atoms:
            atoms[-1] = f"(?:{atoms[-1]}){c}"
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 1)) > i + 1:
            body = pattern[i + 1 : end]
            assert re.fullmatch(r"(?:[a-zA-Z0-9]-[a-zA-Z0-9]|[a-zA-Z0-9])+", body), (
                f"bad character set in filter pattern {pattern!r}"
            )
            atoms.append(f"[{body}]")
            i = end + 1
        else:
            atoms.append(re.escape(c))
            i += 1
    return re.compile("".join(atoms))


def included(name: str, patterns: list[str]) -> bool:
    """Whether a path (or branch name) is included by an ordered list of filter patterns."""
    assert any(not p.startswith("!") for p in patterns), "a filter needs a positive pattern"
    inside = False
    for p in patterns:
        if p.startswith("!"):
            if inside and filter_regex(p[1:]).fullmatch(name):
                inside = False
        elif not inside and filter_regex(p).fullmatch(name):
            inside = True
    return inside


def push_starts_run(wf: dict, changed: list[str], branch: str = "main") -> bool:
    """Whether a push of `changed` files to `branch` starts this workflow."""
    push = wf["on"]["push"]
    assert "paths-ignore" not in push and "branches-ignore" not in push
    branches_ok = "branches" not in push or included(branch, push["branches"])
    paths_ok = "paths" not in push or any(included(p, push["paths"]) for p in changed)
    return branches_ok and paths_ok


# The documented examples of the cheat sheet (path patterns, branch patterns, negation).
CHEAT_SHEET = [
    (["*"], ["README.md", "server.rb"], ["docs/README.md"]),
    (["*.jsx?"], ["page.js", "page.jsx"], ["page.jsxx", "js/page.js"]),
    (["**"], ["all/the/files.md", "README.md"], []),
    (["*.js"], ["app.js", "index.js"], ["js/index.js"]),
    (["**.js"], ["index.js", "js/index.js", "src/js/app.js"], ["index.json"]),
    (["docs/*"], ["docs/README.md", "docs/file.txt"], ["docs/mona/octocat.txt"]),
    (["docs/**"], ["docs/README.md", "docs/mona/octocat.txt"], ["README.md", "mydocs/a"]),
    (
        ["docs/**/*.md"],
        ["docs/README.md", "docs/mona/hello-world.md", "docs/a/markdown/file.md"],
        ["docs/a.txt"],
    ),
    (
        ["**/docs/**"],
        ["docs/hello.md", "dir/docs/my-file.txt", "space/docs/plan/space.doc"],
        ["mydocs/x"],
    ),
    (["**/README.md"], ["README.md", "js/README.md"], ["README.mdx", "xREADME.md"]),
    (["**/*src/**"], ["a/src/app.js", "my-src/code/js/app.js"], ["src.js"]),
    (["**/*-post.md"], ["my-post.md", "path/their-post.md"], ["post.md"]),
    (
        ["**/migrate-*.sql"],
        ["migrate-10909.sql", "db/migrate-v1.0.sql", "db/sept/migrate-v1.sql"],
        ["db/migrate.sql"],
    ),
    (["*.md", "!README.md"], ["hello.md"], ["README.md", "docs/hello.md"]),
    (["*.md", "!README.md", "README*"], ["hello.md", "README.md", "README.doc"], []),
    (
        ["sub-project/**", "!sub-project/docs/**"],
        ["sub-project/src/index.js"],
        ["sub-project/docs/readme.md"],
    ),
    (["feature/*"], ["feature/my-branch", "feature/your-branch"], ["feature/beta-a/my-branch"]),
    (["feature/**"], ["feature/beta-a/my-branch", "feature/mona/the/octocat"], ["features"]),
    (["*feature"], ["mona-feature", "feature", "ver-10-feature"], ["a/feature"]),
    (["v2*"], ["v2", "v2.0", "v2.9"], ["v3"]),
    (["v[12].[0-9]+.[0-9]+"], ["v1.10.1", "v2.0.0"], ["v3.0.0", "v1.x.1"]),
    (["[CB]at", "[1-2]00"], ["Cat", "Bat", "100", "200"], ["Rat", "300"]),
    (["Octo*"], ["Octocat"], ["Octo/cat"]),
    (["a\\*b"], ["a*b"], ["axb"]),
]


@pytest.mark.parametrize(("patterns", "matches", "misses"), CHEAT_SHEET)
def test_filter_matching_follows_githubs_cheat_sheet(patterns, matches, misses):
    for name in matches:
        assert included(name, patterns), (patterns, name)
    for name in misses:
        assert not included(name, patterns), (patterns, name)


# --- which pushes start a run ----------------------------------------------------------------

# What the pipeline reads: DVC pointer files and config, the stage graph, params, code,
# dependencies, and this workflow. A file starts a run exactly when this says so.
PIPELINE_FILES = {
    "dvc.yaml",
    "params.yaml",
    "requirements.txt",
    "pyproject.toml",
    ".dvc/config",
    ".dvcignore",
    ".github/workflows/retrain.yml",
}


def reads_pipeline(path: str) -> bool:
    return path in PIPELINE_FILES or path.endswith(".dvc") or path.startswith(("src/", "stages/"))


def repo_files() -> list[str]:
    """Tracked and new (not ignored) files of the work tree."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(set(out))


# Files a change may add (pointer files of `dvc add`, a new module) next to the real ones.
NEW_FILES = [
    "data/rsna.dvc",
    "data/rsna-2024-lumbar-spine-degenerative-classification.dvc",
    "weights/resnet50.safetensors.dvc",
    "src/spinegrade/data/new_reader.py",
    "stages/new_stage.py",
    "docs/ci.md",
    "reports/new-report.json",
    "tests/test_new.py",
]


def test_every_file_starts_a_run_exactly_when_the_pipeline_reads_it():
    files = repo_files()
    assert {"dvc.lock", "params.yaml", "README.md"} <= set(files), "not the repository root?"
    assert any(f.startswith("src/") for f in files) and any(f.startswith("stages/") for f in files)
    wf = workflow()
    wrong = [
        f"{f}: {'starts' if runs else 'does not start'} a run"
        for f in files + NEW_FILES
        if (runs := push_starts_run(wf, [f])) != reads_pipeline(f)
    ]
    assert not wrong, "push filters disagree with what the pipeline reads:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "changed",
    [
        ["data/rsna.dvc"],
        ["params.yaml"],
        ["dvc.yaml"],
        ["requirements.txt"],
        ["src/spinegrade/training/graders/fit.py"],
        ["stages/train_per_condition.py"],
        [".dvc/config"],
        ["README.md", "params.yaml"],
        ["dvc.lock", "reports/evaluate.json", "src/spinegrade/core/vocab.py"],
    ],
)
def test_a_pipeline_change_starts_a_run(changed):
    assert push_starts_run(workflow(), changed), changed


@pytest.mark.parametrize(
    "changed",
    [
        ["README.md"],
        ["dvc.lock"],
        ["reports/evaluate.json"],
        ["docs/rsna-data.md"],
        ["DEVELOPERS.md", "docs/rsna-metric.md"],
        ["tests/test_pipeline.py"],
        # What this workflow itself commits back:
        ["dvc.lock", "reports/compare-backbones.md", "reports/confusion/spinal-resnet50.csv"],
    ],
)
def test_docs_lock_or_reports_alone_start_no_run(changed):
    assert not push_starts_run(workflow(), changed), changed


def test_branches_and_tags():
    wf = workflow()
    for branch in ["main", "feature/new-loss", "exp/a/b"]:
        assert push_starts_run(wf, ["params.yaml"], branch), branch
    # The pull-request branches this workflow pushes.
    assert not push_starts_run(wf, ["params.yaml"], "retrain/main/123")
    # With a branch filter and no tag filter, a pushed tag starts nothing.
    assert "tags" not in wf["on"]["push"]


def test_dvc_lock_and_reports_are_not_path_filters():
    paths = workflow()["on"]["push"]["paths"]
    for p in paths:
        assert not p.startswith("!"), f"keep the filter positive-only, found {p!r}"
    assert "dvc.lock" not in paths
    for bad in ["dvc.lock", "reports/evaluate.json", "README.md"]:
        assert not any(included(bad, [p]) for p in paths), bad


# --- the workflow's safety properties ----------------------------------------------------


def safety_problems(wf: dict) -> list[str]:
    """What makes the workflow unsafe to run unattended (empty when it is fine)."""
    problems = []
    on = wf["on"]
    if "workflow_dispatch" not in on:
        problems.append("no manual dispatch")
    inputs = (on.get("workflow_dispatch") or {}).get("inputs") or {}
    if "runner" not in inputs:
        problems.append("no `runner` input")
    conc = wf.get("concurrency") or {}
    if "github.ref" not in str(conc.get("group", "")):
        problems.append("no concurrency group per branch")
    if conc.get("cancel-in-progress") is not False:
        problems.append("concurrency must queue runs (cancel-in-progress: false)")
    if wf.get("permissions") not in ({}, {"contents": "read"}):
        problems.append(f"workflow-level permissions {wf.get('permissions')!r}: grant per job")
    jobs = wf["jobs"]
    for name, job in jobs.items():
        if "concurrency" in job:
            problems.append(f"job {name}: its own concurrency overrides the branch queue")
        perms = job.get("permissions")
        if not isinstance(perms, dict):
            problems.append(f"job {name}: permissions {perms!r} (write-all/read-all or none)")
            continue
        for scope, level in perms.items():
            if level not in ("read", "write", "none"):
                problems.append(f"job {name}: {scope}: {level!r}")
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                if (step.get("with") or {}).get("persist-credentials") is not False:
                    problems.append(f"job {name}: checkout keeps the token in .git/config")
            if "${{" in step.get("run", ""):
                problems.append(f"job {name}: expression inside a run script (use env)")
        runs = "\n".join(step.get("run", "") for step in job.get("steps", []))
        if "git commit" in runs and "[skip ci]" not in runs:
            problems.append(f"job {name}: commits without [skip ci]")
        if "git push" in runs and perms.get("contents") != "write":
            problems.append(f"job {name}: pushes without contents: write")
        if perms.get("pull-requests") == "write" and "gh pr create" not in runs:
            problems.append(f"job {name}: pull-requests: write it does not use")
        if re.search(r"^\s*make retrain\b", runs, re.M) and "write" in perms.values():
            problems.append(f"job {name}: the training job holds a write token")
    return problems


def test_the_workflow_is_safe():
    assert safety_problems(workflow()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("cancel-in-progress: false", "cancel-in-progress: true", "cancel-in-progress"),
        ("  group: retrain-${{ github.ref }}", "  group: retrain", "per branch"),
        ("permissions: {}", "permissions: write-all", "workflow-level permissions"),
        ("      contents: read  # check out the code", "      contents: write", "write token"),
        ('[skip ci]" \\', '" \\', "without [skip ci]"),
        ("          persist-credentials: false\n", "", "keeps the token"),
        ('          echo "changed=true"', '          echo "${{ github.sha }}"', "expression"),
    ],
)
def test_safety_check_catches_unsafe_edits(old, new, problem):
    problems = safety_problems(load(mutate(workflow_text(), old, new)))
    assert any(problem in p for p in problems), problems


def test_jobs_and_steps_do_what_the_issue_asks():
    wf = workflow()
    jobs = wf["jobs"]
    retrain = jobs["retrain"]
    runs_on = retrain["runs-on"]
    assert "inputs.runner" in runs_on and "vars.RETRAIN_RUNNER" in runs_on
    assert runs_on.endswith("'ubuntu-latest' }}"), "the default must run anywhere"
    checkout = retrain["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["fetch-depth"] == 0, "the metrics diff needs the base branch"
    setup = next(s for s in retrain["steps"] if "setup-python" in s.get("uses", ""))
    assert setup["with"]["python-version"] == "3.11"
    assert setup["with"]["cache"] == "pip"
    assert "requirements.txt" in setup["with"]["cache-dependency-path"]
    step = next(s for s in retrain["steps"] if s.get("id") == "retrain")
    assert re.search(r"^make retrain$", step["run"], re.M)
    env = step["env"]
    assert env["RETRAIN_BASE"] == "origin/${{ github.event.repository.default_branch }}"
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ]:
        assert env[name] == f"${{{{ secrets.{name} }}}}", name
    # Only dvc.lock and reports/ leave the training job: no mlruns/, no models, no secrets.
    upload = next(s for s in retrain["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["path"].split() == ["dvc.lock", "reports/"]
    # The commit goes to the branch by default, or into a pull request on request.
    assert "!(inputs.open_pr" in jobs["commit"]["if"]
    assert "(inputs.open_pr" in jobs["pull-request"]["if"]
    for name in ["commit", "pull-request"]:
        assert jobs[name]["needs"] == "retrain"
        assert "needs.retrain.outputs.changed == 'true'" in jobs[name]["if"]
    assert wf["on"]["workflow_dispatch"]["inputs"]["open_pr"]["type"] == "boolean"


def test_make_retrain_exists():
    """The workflow runs `make retrain`: the Makefile must have it (dry run: nothing runs)."""
    proc = subprocess.run(
        ["make", "-n", "retrain"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spinegrade.cli.retrain" in proc.stdout


# --- the linters -------------------------------------------------------------------------


def check_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(path: Path) -> subprocess.CompletedProcess:
    # --offline: only the audits that need no GitHub API; GH_TOKEN is kept from it.
    env = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN")}
    return subprocess.run(
        [tool("zizmor"), "--offline", "--format", "plain", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_workflow_matches_the_github_workflow_schema():
    proc = check_schema(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = mutate(workflow_text(), "      contents: read  #", "      contents: readonly  #")
    proc = check_schema(write_workflow(tmp_path, broken))
    assert proc.returncode != 0, proc.stdout
    assert "permissions" in proc.stdout + proc.stderr


def test_zizmor_finds_nothing():
    proc = zizmor(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("old", "new", "audit"),
    [
        # A commit message pasted into a script is code anyone who pushes can write.
        (
            "          make retrain\n",
            '          echo "${{ github.event.head_commit.message }}"\n          make retrain\n',
            "template-injection",
        ),
        ("          persist-credentials: false\n", "", "artipacked"),
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
    ],
)
def test_zizmor_catches_planted_mistakes(tmp_path, old, new, audit):
    proc = zizmor(write_workflow(tmp_path, mutate(workflow_text(), old, new)))
    assert proc.returncode != 0, proc.stdout
    assert audit in proc.stdout, proc.stdout


# --- the shell steps, run as GitHub runs them -------------------------------------------------


def step(job: str, step_id: str) -> dict:
    return next(s for s in workflow()["jobs"][job]["steps"] if s.get("id") == step_id)


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment without this machine's git config, git identity or a real token."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # `shell: bash` on GitHub is `bash --noprofile --norc -eo pipefail {0}`.
    path = cwd.parent / f"step-{abs(hash(script))}.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


COMMITTED = {
    "params.yaml": "epochs: 5\n",
    "README.md": "# readme\n",
    "dvc.lock": "schema: '2.0'\nold: 1\n",
    "reports/evaluate.json": '{"score": 0.5}\n',
    "reports/confusion/spinal-resnet50.csv": "actual,predicted\n",
}


@pytest.fixture
def origin(tmp_path):
    """A bare 'GitHub' repository with a main branch, and the workflow's checkout of it."""
    # The developer who pushed; the steps' own commits must name the bot.
    env = clean_env(
        tmp_path,
        GIT_AUTHOR_NAME="dev",
        GIT_AUTHOR_EMAIL="dev@example.com",
        GIT_COMMITTER_NAME="dev",
        GIT_COMMITTER_EMAIL="dev@example.com",
    )
    remote = tmp_path / "origin.git"
    seed = tmp_path / "seed"
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path, env=env)
    git("init", "-q", "-b", "main", str(seed), cwd=tmp_path, env=env)
    write_files(seed, COMMITTED)
    git("add", "-A", cwd=seed, env=env)
    git("commit", "-q", "-m", "params change", cwd=seed, env=env)
    git("push", "-q", str(remote), "main", cwd=seed, env=env)
    work = tmp_path / "work"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path, env=env)
    sha = git("rev-parse", "HEAD", cwd=work, env=env)
    # The new outputs, as the training job's artifact holds them: one confusion CSV was
    # replaced by another.
    outputs = tmp_path / "runner-temp" / "retrain-outputs"
    write_files(
        outputs,
        {
            "dvc.lock": "schema: '2.0'\nnew: 2\n",
            "reports/evaluate.json": '{"score": 0.7}\n',
            "reports/confusion/spinal-convnext_tiny.csv": "actual,predicted\n",
        },
    )
    token = "ghs_notarealtoken123"
    server = "https://github.example"
    # Send the step's authenticated GitHub URL to the local bare repository.
    url = f"https://x-access-token:{token}@github.example/owner/repo.git"
    step_env = clean_env(
        tmp_path,
        GITHUB_SHA=sha,
        GITHUB_SERVER_URL=server,
        GITHUB_REPOSITORY="owner/repo",
        GITHUB_RUN_ID="4242",
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        OUTPUTS=str(outputs),
        TOKEN=token,
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0=f"url.{remote}.insteadOf",
        GIT_CONFIG_VALUE_0=url,
    )
    return {
        "remote": remote,
        "seed": seed,
        "work": work,
        "sha": sha,
        "env": step_env,
        "token": token,
        "git_env": env,
    }


def changed_files(repo: Path, a: str, b: str, env: dict) -> list[str]:
    return git("diff", "--name-only", "--no-renames", a, b, cwd=repo, env=env).split()


def test_commit_step_pushes_a_skip_ci_commit_that_starts_no_run(origin):
    o = origin
    proc = run_step(step("commit", "commit")["run"], o["work"], {**o["env"], "BRANCH": "main"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert o["token"] not in proc.stdout + proc.stderr
    remote, env = o["remote"], o["git_env"]
    head = git("rev-parse", "main", cwd=remote, env=env)
    assert git("rev-parse", "main^", cwd=remote, env=env) == o["sha"]
    message = git("log", "-1", "--format=%B", "main", cwd=remote, env=env)
    assert "[skip ci]" in message and o["sha"][:12] in message
    assert "github-actions[bot]" in git("log", "-1", "--format=%an", "main", cwd=remote, env=env)
    changed = changed_files(remote, o["sha"], head, env)
    assert sorted(changed) == [
        "dvc.lock",
        "reports/confusion/spinal-convnext_tiny.csv",
        "reports/confusion/spinal-resnet50.csv",  # deleted: the run no longer writes it
        "reports/evaluate.json",
    ]
    assert not push_starts_run(workflow(), changed, "main")
    assert "Committed" in Path(o["env"]["GITHUB_STEP_SUMMARY"]).read_text()


def test_commit_step_fails_when_the_branch_moved_on(origin):
    o = origin
    env = o["git_env"]
    write_files(o["seed"], {"README.md": "# newer\n"})
    git("commit", "-q", "-am", "docs", cwd=o["seed"], env=env)
    git("push", "-q", str(o["remote"]), "main", cwd=o["seed"], env=env)
    moved = git("rev-parse", "main", cwd=o["remote"], env=env)
    proc = run_step(step("commit", "commit")["run"], o["work"], {**o["env"], "BRANCH": "main"})
    assert proc.returncode != 0
    assert "::error::" in proc.stdout and "moved on" in proc.stdout
    assert o["token"] not in proc.stdout + proc.stderr
    assert git("rev-parse", "main", cwd=o["remote"], env=env) == moved


def test_pull_request_step_pushes_a_retrain_branch_and_opens_a_pr(origin, tmp_path):
    o = origin
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    calls = tmp_path / "gh-calls.txt"
    (fake_bin / "gh").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{calls}"\n'
        'echo "https://github.example/owner/repo/pull/7"\n'
    )
    (fake_bin / "gh").chmod(0o755)
    env = {
        **o["env"],
        "PATH": f"{fake_bin}:{o['env']['PATH']}",
        "BASE": "main",
        "GH_TOKEN": o["token"],
        "GH_REPO": "owner/repo",
    }
    proc = run_step(step("pull-request", "pull-request")["run"], o["work"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    genv = o["git_env"]
    head = "retrain/main/4242"
    assert git("rev-parse", "main", cwd=o["remote"], env=genv) == o["sha"], "main untouched"
    assert git("rev-parse", f"{head}^", cwd=o["remote"], env=genv) == o["sha"]
    assert "[skip ci]" in git("log", "-1", "--format=%B", head, cwd=o["remote"], env=genv)
    changed = changed_files(o["remote"], o["sha"], head, genv)
    assert changed and all(c == "dvc.lock" or c.startswith("reports/") for c in changed)
    assert not push_starts_run(workflow(), changed, head)
    args = calls.read_text().split("\n")
    assert args[:2] == ["pr", "create"]
    assert args[args.index("--base") + 1] == "main" and args[args.index("--head") + 1] == head
    assert "pull/7" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()


def test_change_check_sees_dvc_lock_and_reports_only(origin, tmp_path):
    o = origin
    script = step("retrain", "changes")["run"]

    def changed() -> str:
        out = tmp_path / "github-output"
        out.write_text("")
        proc = run_step(script, o["work"], {**o["env"], "GITHUB_OUTPUT": str(out)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return out.read_text().strip()

    assert changed() == "changed=false"
    write_files(o["work"], {"params.yaml": "epochs: 6\n", "mlruns/mlflow.db": "x"})
    assert changed() == "changed=false"
    write_files(o["work"], {"reports/new.json": "{}\n"})
    assert changed() == "changed=true"
    (o["work"] / "reports" / "new.json").unlink()
    write_files(o["work"], {"dvc.lock": "schema: '2.0'\nnew: 3\n"})
    assert changed() == "changed=true"


def test_retrain_step_unsets_missing_secrets_and_runs_make_retrain(tmp_path):
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    seen = tmp_path / "make-env.txt"
    (fake_bin / "make").write_text(f'#!/bin/sh\necho "args=$*" > "{seen}"\nenv >> "{seen}"\n')
    (fake_bin / "make").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    names = list(step("retrain", "retrain")["env"])
    # A secret that is not set reaches the step as an empty string.
    env = clean_env(tmp_path, PATH=f"{fake_bin}:{os.environ['PATH']}")
    env.update({name: "" for name in names})
    env.update(RETRAIN_BASE="origin/main", MLFLOW_TRACKING_URI="https://mlflow.example")
    proc = run_step(step("retrain", "retrain")["run"], work, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = seen.read_text().splitlines()
    assert lines[0] == "args=retrain"
    passed = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert passed["MLFLOW_TRACKING_URI"] == "https://mlflow.example"
    assert passed["RETRAIN_BASE"] == "origin/main"
    for name in names:
        if name not in ("MLFLOW_TRACKING_URI", "RETRAIN_BASE"):
            assert name not in passed, f"{name} reached make as an empty string"
