"""spinegrade.cli.retrain on a two-stage DVC project of its own (seconds, not a pipeline):
what is stale, which stages ran and which the run-cache restored, what was pushed, and the
one-line errors. tests/test_team.py runs ``make retrain`` on the real pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

pytestmark = pytest.mark.dvc

# first: in.txt -> a.txt (upper case); second: a.txt -> b.txt (twice). FAIL makes second fail.
STAGE = (
    "{python} -c \"import os, pathlib; p = pathlib.Path; p('{out}').write_text({text}); "
    "print('{name} ran'); raise SystemExit(3 if os.environ.get('FAIL') == '{name}' else 0)\""
)


def env(**extra: str) -> dict[str, str]:
    """No MLflow or GitHub settings; this checkout's src/ first on the path."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GITHUB_"))}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), out.get("PYTHONPATH")]))
    return {**out, **extra}


def sh(cwd: Path, *cmd: str, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(**extra), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def retrain(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "spinegrade.cli.retrain", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(**extra), capture_output=True, text=True)


def summary_line(proc: subprocess.CompletedProcess, key: str) -> str:
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"- {key}: ")]
    return line.removeprefix(f"- {key}: ")


@pytest.fixture
def project(tmp_path) -> Path:
    """git + DVC project: two stages, tracked data (data.dvc), a local default remote."""
    work, remote = tmp_path / "work", tmp_path / "remote"
    work.mkdir()
    remote.mkdir()
    stages = {
        "first": {
            "cmd": STAGE.format(
                python=sys.executable,
                out="a.txt",
                text="p('in.txt').read_text().upper()",
                name="first",
            ),
            "deps": ["in.txt"],
            "outs": ["a.txt"],
        },
        "second": {
            "cmd": STAGE.format(
                python=sys.executable, out="b.txt", text="p('a.txt').read_text() * 2", name="second"
            ),
            "deps": ["a.txt"],
            "outs": ["b.txt"],
        },
    }
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (work / "in.txt").write_text("hello\n")
    (work / "data").mkdir()
    (work / "data" / "d.txt").write_text("tracked\n")
    sh(work, "git", "init", "-q", "-b", "main")
    sh(work, "git", "config", "user.email", "ci@example.invalid")
    sh(work, "git", "config", "user.name", "ci")
    sh(work, DVC, "init", "-q")
    sh(work, DVC, "config", "core.analytics", "false")
    sh(work, DVC, "add", "-q", "data")
    sh(work, DVC, "remote", "add", "-q", "-d", "shared", str(remote))
    sh(work, "git", "add", "-A")
    sh(work, "git", "commit", "-qm", "init")
    return work


def test_stale_stages_run_restore_and_push(project):
    remote = project.parent / "remote"
    first = retrain(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stderr == ""
    assert "Running stage 'first':" in first.stdout and "second ran" in first.stdout  # streamed
    assert summary_line(first, "stale before repro") == "`first`, `second`"
    assert summary_line(first, "re-run") == "`first`, `second`"
    assert summary_line(first, "restored from the run-cache") == "none"
    pushed = int(summary_line(first, "files pushed"))
    assert pushed == sum(1 for p in remote.rglob("*") if p.is_file()) and pushed > 0
    assert (remote / "runs").is_dir()
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "retrained")

    same = retrain(project)
    assert "stale stages: none" in same.stdout
    assert summary_line(same, "re-run") == "none" and summary_line(same, "files pushed") == "0"

    # a changed input: both run (not pushed yet); back to the committed input: the run-cache
    # restores both, and the entries of the unpushed run go to the remote
    (project / "in.txt").write_text("world\n")
    changed = retrain(project, "--no-push")
    assert summary_line(changed, "re-run") == "`first`, `second`"
    assert (project / "b.txt").read_text() == "WORLD\nWORLD\n"
    (project / "in.txt").write_text("hello\n")
    back = retrain(project)
    assert summary_line(back, "stale before repro") == "`first`, `second`"
    assert summary_line(back, "re-run") == "none"
    assert summary_line(back, "restored from the run-cache") == "`first`, `second`"
    assert "first ran" not in back.stdout
    assert (project / "b.txt").read_text() == "HELLO\nHELLO\n"
    assert int(summary_line(back, "files pushed")) > 0  # the run-cache entries of "world"


def test_a_failing_stage_is_one_line_naming_it(project):
    proc = retrain(project, "--no-push", FAIL="second")
    assert proc.returncode == 1
    assert "Running stage 'second':" in proc.stdout and "second ran" in proc.stdout
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: dvc repro failed in stage 'second': ")
    assert "exited with 3" in proc.stderr


def test_a_remote_missing_the_tracked_data_is_named(project):
    broken = project.parent / "broken"
    assert retrain(project).returncode == 0
    shutil.copytree(project.parent / "remote", broken)
    pointer = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    (broken / "files" / "md5" / pointer[:2] / pointer[2:]).unlink()  # the directory listing
    clone = project.parent / "clone"
    sh(project.parent, "git", "clone", "-q", str(project), str(clone))
    sh(clone, DVC, "remote", "add", "-q", "-d", "--local", "shared", str(broken))
    proc = retrain(clone)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(
        f"error: remote 'shared ({broken})': could not pull the tracked data (data.dvc): "
    )
    assert "Checkout failed" in proc.stderr
    assert not (clone / "data").exists()


def test_no_remote_runs_repro_only(project):
    sh(project, DVC, "remote", "remove", "shared")
    proc = retrain(project)
    assert proc.returncode == 0, proc.stderr
    assert "no default DVC remote configured" in proc.stdout
    assert summary_line(proc, "DVC remote") == "none configured (pull/push skipped)"
    assert summary_line(proc, "re-run") == "`first`, `second`"


def test_outside_a_project_is_one_line(tmp_path):
    proc = retrain(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {tmp_path}: no dvc.yaml here; run from the project root\n"
