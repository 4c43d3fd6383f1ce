"""spinegrade.tracking: where the store is, creating it once under parallel runs, parent runs,
provenance hashes, and the design contract that `dvc exp run --temp` logs into the workspace.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from spinegrade.tracking import store as tracking

N_PARALLEL = 4


def store_uri(ws: Path) -> str:
    return f"sqlite:///{ws.resolve() / 'mlruns' / 'mlflow.db'}"


# --- where the store is ------------------------------------------------------------------


def test_workspace_root_from_inside_a_dvc_exp_copy(tmp_path):
    ws = tmp_path / "ws"
    for inner in (
        ws / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sub",
        ws / ".dvc" / "tmp" / "exps" / "standalone" / "tmp3v8_mkg_",  # DVC 3's --temp layout
    ):
        inner.mkdir(parents=True)
        assert tracking.workspace_root(inner) == ws.resolve()


def test_workspace_root_elsewhere_is_the_path_itself(tmp_path, monkeypatch):
    (tmp_path / "a" / ".dvc" / "tmp").mkdir(parents=True)
    assert tracking.workspace_root(tmp_path / "a") == (tmp_path / "a").resolve()
    assert (
        tracking.workspace_root(tmp_path / "a" / ".dvc" / "tmp")
        == (tmp_path / "a" / ".dvc" / "tmp").resolve()
    )
    monkeypatch.chdir(tmp_path / "a")
    assert tracking.workspace_root() == (tmp_path / "a").resolve()


def test_tracking_uri_respects_mlflow_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_tracking_uri_default_is_absolute_sqlite_in_the_workspace(
    tmp_path, monkeypatch, no_tracking_uri
):
    ws = tmp_path / "ws"
    exp_copy = ws / ".dvc" / "tmp" / "exps" / "tmpxyz"
    exp_copy.mkdir(parents=True)
    assert tracking.tracking_uri(ws) == store_uri(ws)
    assert tracking.tracking_uri(exp_copy) == store_uri(ws)
    monkeypatch.chdir(exp_copy)  # the default root is the cwd
    uri = tracking.tracking_uri()
    assert uri == store_uri(ws)
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()


# --- creating the store and runs ---------------------------------------------------------


def _parallel_worker(root: str, barrier, results) -> None:
    """One 'stage': setup() and parent_run() at the same moment as the other workers."""
    try:
        barrier.wait(timeout=120)
        exp = tracking.setup("exp", root)
        barrier.wait(timeout=120)
        parent = tracking.parent_run(exp, "key-1", "pipeline-key-1")
        results.put(("ok", exp, parent))
    except BaseException:
        results.put(("error", traceback.format_exc(), ""))


def test_setup_and_parent_run_from_parallel_processes_on_a_fresh_store(tmp_path, no_tracking_uri):
    ws = tmp_path / "ws"
    ws.mkdir()
    ctx = multiprocessing.get_context("fork")  # separate processes, like parallel DVC stages
    barrier, results = ctx.Barrier(N_PARALLEL), ctx.Queue()
    procs = [
        ctx.Process(target=_parallel_worker, args=(str(ws), barrier, results))
        for _ in range(N_PARALLEL)
    ]
    try:
        for p in procs:
            p.start()
        out = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    errors = [o[1] for o in out if o[0] != "ok"]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * N_PARALLEL
    assert len({o[1] for o in out}) == 1, f"several experiment ids: {out}"
    assert len({o[2] for o in out}) == 1, f"several parent runs: {out}"

    assert sorted(p.name for p in (ws / "mlruns").iterdir()) == [".lock", "mlflow.db"]
    client = MlflowClient(store_uri(ws))
    names = [e.name for e in client.search_experiments()]
    assert sorted(names) == ["Default", "exp"]
    parents = client.search_runs(
        [out[0][1]], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent'"
    )
    assert [r.info.run_id for r in parents] == [out[0][2]]


def test_setup_is_idempotent_and_puts_artifacts_under_mlruns(tmp_path, no_tracking_uri):
    ws = tmp_path / "ws"
    ws.mkdir()
    exp = tracking.setup("exp", ws)
    assert tracking.setup("exp", ws) == exp
    assert mlflow.get_tracking_uri() == store_uri(ws)
    location = MlflowClient(store_uri(ws)).get_experiment(exp).artifact_location
    assert location == (ws.resolve() / "mlruns" / "artifacts").as_uri()


def test_parent_run_is_one_per_key(tmp_path, no_tracking_uri):
    exp = tracking.setup("exp", tmp_path)
    a = tracking.parent_run(exp, "key-a", "pipeline-a")
    assert tracking.parent_run(exp, "key-a", "pipeline-a") == a
    b = tracking.parent_run(exp, "key-b", "pipeline-b")
    assert b != a
    run = MlflowClient(store_uri(tmp_path)).get_run(a)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.PIPELINE_TAG] == "key-a"
    assert run.data.tags[tracking.ROLE_TAG] == "parent"
    assert run.info.run_name == "pipeline-a"


def test_child_runs_of_one_pipeline_run_share_a_parent(tmp_path, no_tracking_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("a: 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1\n")

    def child(name: str, role: str) -> tuple[str, dict]:
        with tracking.child_run("exp", params, ["data/x.csv"], name, role) as run:
            run_id = run.info.run_id
        tags = MlflowClient(store_uri(tmp_path)).get_run(run_id).data.tags
        return tags["mlflow.parentRunId"], tags

    parent, tags = child("evaluate", "evaluate")
    assert tags[tracking.ROLE_TAG] == "evaluate" and tags["mlflow.runName"] == "evaluate"
    assert tags["dvc.data/x.csv"].startswith("sha256:")
    assert child("predict", "predict")[0] == parent
    params.write_text("a: 2\n")  # another pipeline run: another parent
    assert child("evaluate", "evaluate")[0] != parent


def test_parent_runs_created_twice_by_a_race_end_as_one(tmp_path, no_tracking_uri, monkeypatch):
    """Two stages without a shared lock (a tracking server) may both find no parent and both
    create one: the second creator sees the older one, keeps it and deletes its own."""
    exp = tracking.setup("exp", tmp_path)
    client = MlflowClient(store_uri(tmp_path))
    first = tracking.parent_run(exp, "key", "pipeline-key")  # the other stage's
    real = tracking._parents
    looks = []

    def missed_once(*args):
        looks.append(1)
        return [] if len(looks) == 1 else real(*args)  # the first look ran before it existed

    monkeypatch.setattr(tracking, "_parents", missed_once)
    assert tracking.parent_run(exp, "key", "pipeline-key") == first
    assert len(looks) == 2
    live = client.search_runs([exp], filter_string=f"tags.`{tracking.PIPELINE_TAG}` = 'key'")
    assert [r.info.run_id for r in live] == [first]  # the duplicate was deleted


def test_a_run_left_running_by_a_killed_process_is_ended_killed(
    tmp_path, no_tracking_uri, monkeypatch, caplog
):
    """A stage killed with SIGKILL never ends its run: the next run of the same name marks
    it KILLED and names it in the log; a run whose process still lives is left alone."""
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("a: 1\n")
    exp = tracking.setup("exp", tmp_path)
    client = MlflowClient(store_uri(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    started = f"{psutil.Process(dead.pid).create_time():.3f}"
    dead.wait()
    host = socket.gethostname()
    gone = client.create_run(
        exp,
        run_name="evaluate",
        tags={
            tracking.HOST_TAG: host,
            tracking.PID_TAG: str(dead.pid),
            tracking.PROCESS_START_TAG: started,
        },
    ).info.run_id
    alive = client.create_run(
        exp, run_name="evaluate", tags=tracking.process_tags()
    ).info.run_id  # this very process: still running
    elsewhere = client.create_run(
        exp,
        run_name="evaluate",
        tags={tracking.HOST_TAG: "another-machine", tracking.PID_TAG: str(dead.pid)},
    ).info.run_id
    with caplog.at_level("WARNING"), tracking.child_run("exp", params, [], "evaluate", "evaluate"):
        pass
    assert client.get_run(gone).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"  # its pid means nothing here
    assert f"MLflow run {gone} (evaluate) was left RUNNING" in caplog.text
    assert alive not in caplog.text


def test_setup_does_not_pin_the_store_for_other_workspaces(tmp_path, no_tracking_uri):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    tracking.setup("exp", a)
    assert tracking.tracking_uri(b) == store_uri(b)
    tracking.setup("exp", b)
    assert (b / "mlruns" / "mlflow.db").is_file()


# --- provenance ---------------------------------------------------------------------------


def test_flatten():
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x", "f": {}}
    assert tracking.flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "e": "x", "f": {}}
    assert tracking.flatten({"k": 1}, prefix="p.") == {"p.k": 1}
    assert tracking.flatten({}) == {}


def test_pipeline_key_is_short_stable_and_order_sensitive():
    key = tracking.pipeline_key("commit", "md5", "params")
    assert key == tracking.pipeline_key("commit", "md5", "params")
    assert len(key) == 16
    assert key != tracking.pipeline_key("commit", "params", "md5")
    assert key != tracking.pipeline_key("commit", "md5", "params2")


def test_content_hash_follows_file_contents_and_names(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"one")
    first = tracking.content_hash(f)
    assert tracking.content_hash(f) == first
    f.write_bytes(b"two")
    assert tracking.content_hash(f) != first

    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "x.txt").write_text("x")
    (d / "sub" / "y.txt").write_text("y")
    base = tracking.content_hash(d)
    (d / "sub" / "y.txt").write_text("y2")
    changed = tracking.content_hash(d)
    assert changed != base
    (d / "z.txt").write_text("")
    assert tracking.content_hash(d) != changed
    (d / "z.txt").rename(d / "w.txt")
    assert tracking.content_hash(d) not in {base, changed}

    copy = tmp_path / "elsewhere" / "d"
    (copy / "sub").mkdir(parents=True)
    for p in d.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(d)).write_bytes(p.read_bytes())
    assert tracking.content_hash(copy) == tracking.content_hash(d)  # location-independent


def test_dvc_hashes_reads_dvc_lock_and_falls_back_to_content(tmp_path):
    (tmp_path / "data" / "crops").mkdir(parents=True)
    (tmp_path / "data" / "crops" / "a.npy").write_bytes(b"\x00\x01")
    (tmp_path / "data" / "folds.csv").write_text("study_id,fold\n1,0\n")
    (tmp_path / "data" / "other.csv").write_text("x\n")
    lock = {
        "schema": "2.0",
        "stages": {
            "crop-rois": {
                "cmd": "python stages/crop_rois.py",
                "outs": [{"path": "data/crops", "hash": "md5", "md5": "abc123.dir", "size": 2}],
            },
            "split-folds": {
                "cmd": "python stages/split_folds.py",
                "outs": [{"path": "data/folds.csv", "hash": "md5", "md5": "def456"}],
            },
            "no-md5": {"cmd": "true", "outs": [{"path": "data/other.csv"}]},
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    got = tracking.dvc_hashes(["data/crops", "data/folds.csv", "data/other.csv"], root=tmp_path)
    assert got == {
        "data/crops": "abc123.dir",
        "data/folds.csv": "def456",
        "data/other.csv": "sha256:" + tracking.content_hash(tmp_path / "data" / "other.csv"),
    }

    (tmp_path / "dvc.lock").unlink()
    got = tracking.dvc_hashes(["data/crops"], root=tmp_path)
    assert got == {"data/crops": "sha256:" + tracking.content_hash(tmp_path / "data" / "crops")}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_commit_marks_dirty_trees_and_unknown_outside_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert tracking.git_commit(repo) == "unknown"
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("1")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "init")
    sha = _git(repo, "rev-parse", "HEAD")
    assert tracking.git_commit(repo) == sha
    (repo / "untracked.txt").write_text("ignored by the dirty check")
    assert tracking.git_commit(repo) == sha
    (repo / "f.txt").write_text("2")
    assert tracking.git_commit(repo) == sha + "-dirty"


# --- the design contract: temporary DVC experiments log into the workspace's store -------

# The stage's code: python -c, one line (a `with` block cannot follow a semicolon).
LOG_RUN = "; ".join(
    [
        "import os, mlflow",
        "from spinegrade.tracking import store as tracking",
        "run = tracking.child_run('exp', 'params.yaml', [], 'from-dvc-exp', 'stage')",
        "run.__enter__()",
        "mlflow.set_tag('cwd', os.getcwd())",
        "mlflow.log_metric('m', 1.0)",
        "mlflow.log_text('hello', 'note.txt')",
        "run.__exit__(None, None, None)",
    ]
)


@pytest.mark.slow
@pytest.mark.dvc
def test_dvc_exp_run_temp_logs_into_the_workspace_store(tmp_path):
    """A temporary experiment (as --queue ones are: a copy under .dvc/tmp/exps/) logs into
    the workspace's store, and the stage sees DVC's variables: its parent run is named after
    the experiment, with its baseline and the param -S changed."""
    ws = (tmp_path / "ws").resolve()
    ws.mkdir()
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run("git", "init", "-q")
    run("git", "config", "user.name", "spinegrade-test")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "commit.gpgsign", "false")
    run(str(venv_bin / "dvc"), "init", "-q")
    (ws / "params.yaml").write_text("a: 1\nb: 1\n")
    (ws / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"log": {"cmd": f'python -c "{LOG_RUN}"', "params": ["a"]}}})
    )
    (ws / ".gitignore").write_text("/mlruns/\n")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "init")
    baseline = run("git", "rev-parse", "HEAD").strip()
    run(str(venv_bin / "dvc"), "exp", "run", "--temp", "-n", "a2", "-S", "a=2")

    client = MlflowClient(store_uri(ws))
    exp = client.get_experiment_by_name("exp")
    assert exp is not None, "the temporary experiment's run did not reach the workspace store"
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["a2", "from-dvc-exp"]
    run_, parent = runs["from-dvc-exp"], runs["a2"]
    exps_dir = ws / ".dvc" / "tmp" / "exps"
    assert Path(run_.data.tags["cwd"]).is_relative_to(exps_dir), "did not run in a temp copy"
    assert run_.data.metrics == {"m": 1.0}
    artifact = ws / "mlruns" / "artifacts" / run_.info.run_id / "artifacts" / "note.txt"
    assert artifact.read_text() == "hello"
    stray = [p for p in ws.rglob("mlflow.db") if p != ws / "mlruns" / "mlflow.db"]
    assert not stray, f"stores outside the workspace's mlruns/: {stray}"

    assert run_.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run_.data.tags[tracking.EXP_NAME_TAG] == "a2"
    assert parent.data.tags[tracking.EXP_NAME_TAG] == "a2"
    assert parent.data.tags[tracking.EXP_BASELINE_TAG] == baseline
    assert parent.data.tags[tracking.COMMIT_TAG].removesuffix("-dirty") == baseline
    assert parent.data.params == {"a": "2"}


# --- logged models -----------------------------------------------------------------------


def test_a_logged_grader_model_loads_back_and_predicts_the_same(tmp_path, no_tracking_uri):
    """With training.log_model, the fold run's hooks log the model (log_torch_model skips
    MLflow's own load-and-predict check of the input example; this is that check): the pt2
    artifact is the fold run's logged model, loads as torch and as pyfunc, and gives the
    model's outputs. Without it, the run has no logged model."""
    import numpy as np
    import torch

    from spinegrade.models.backbones import create_backbone
    from spinegrade.tracking.hooks import MlflowFoldHooks

    experiment = tracking.setup("models", tmp_path)
    parent = tracking.parent_run(experiment, "key", "pipeline")
    torch.manual_seed(0)
    model = create_backbone("resnet18", 3, 32, {}).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    client = MlflowClient()
    logged = {}
    for fold, log_model in ((0, True), (1, False)):
        hooks = MlflowFoldHooks(
            experiment, parent, "spinal", "resnet18", {}, {}, log_model, (2, 3, 32, 32)
        )
        hooks.start(fold)
        run_id = mlflow.active_run().info.run_id
        hooks.end(fold, model, {"macro_recall": 0.5}, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
        logged[fold] = client.search_logged_models(
            [experiment], filter_string=f"source_run_id = '{run_id}'"
        )
    assert not logged[1]
    (model_info,) = logged[0]
    uri = model_info.model_uri
    loaded = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(x)).numpy(), expected, atol=1e-5)
    served = mlflow.pyfunc.load_model(uri).predict(x)
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)


# --- DVC experiments and MLflow runs name each other -------------------------------------

BASELINE_PARAMS = {
    "mlflow": {"experiment": "exp"},
    "evaluate": {"bootstrap_resamples": 1000, "seed": 0},
    "old": {"x": 1},
}


@pytest.fixture
def baseline(tmp_path, monkeypatch, no_tracking_uri) -> tuple[Path, str]:
    """A git workspace whose commit (the baseline) holds BASELINE_PARAMS as params.yaml;
    the cwd; outside any DVC experiment until a test sets DVC's variables."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(BASELINE_PARAMS))
    _git(ws, "init", "-q")
    _git(ws, "add", "params.yaml")
    _git(ws, "commit", "-q", "-m", "baseline")
    monkeypatch.chdir(ws)
    for var in (tracking.DVC_EXP_NAME, tracking.DVC_EXP_BASELINE_REV):
        monkeypatch.delenv(var, raising=False)
    return ws, _git(ws, "rev-parse", "HEAD")


def _in_experiment(monkeypatch, name: str, rev: str) -> None:
    """The environment `dvc exp run -n {name}` gives a stage (dvc.env)."""
    monkeypatch.setenv(tracking.DVC_EXP_NAME, name)
    monkeypatch.setenv(tracking.DVC_EXP_BASELINE_REV, rev)


def _as_set_by_dash_s(ws: Path) -> None:
    """params.yaml as `-S evaluate.bootstrap_resamples=200 -S new.y=[1,2]` and a removed
    param leave it."""
    params = {
        "mlflow": {"experiment": "exp"},
        "evaluate": {"bootstrap_resamples": 200, "seed": 0},
        "new": {"y": [1, 2]},
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def test_an_experiments_parent_run_is_named_after_it_and_holds_the_changed_params(
    baseline, monkeypatch
):
    ws, rev = baseline
    _as_set_by_dash_s(ws)
    _in_experiment(monkeypatch, "boot200", rev)
    exp, parent, tags = tracking.pipeline_run("exp", "params.yaml", [])
    run = MlflowClient(store_uri(ws)).get_run(parent)
    assert run.info.run_name == "boot200"
    assert run.data.tags[tracking.EXP_NAME_TAG] == "boot200"
    assert run.data.tags[tracking.EXP_BASELINE_TAG] == rev
    assert run.data.tags[tracking.COMMIT_TAG] == f"{rev}-dirty"  # -S changed params.yaml
    assert run.data.tags[tracking.ROLE_TAG] == "parent"
    assert "DVC experiment `boot200`" in run.data.tags["mlflow.note.content"]
    # only what differs from the baseline's params.yaml, added and removed ones included
    assert run.data.params == {
        "evaluate.bootstrap_resamples": "200",
        "new.y": "[1, 2]",
        "old.x": tracking.REMOVED,
    }
    assert tags[tracking.EXP_NAME_TAG] == "boot200"  # for every run of the stage
    assert tags[tracking.COMMIT_TAG] == f"{rev}-dirty"
    # the next stage finds it, without reading the baseline again
    with monkeypatch.context() as m:
        m.setattr(tracking, "baseline_params", lambda *a: pytest.fail("read again"))
        assert tracking.pipeline_run("exp", "params.yaml", [])[1] == parent

    # the same params under another name: another experiment, another parent
    _in_experiment(monkeypatch, "boot200-again", rev)
    other = tracking.pipeline_run("exp", "params.yaml", [])[1]
    assert other != parent
    assert MlflowClient(store_uri(ws)).get_run(other).info.run_name == "boot200-again"


def test_outside_an_experiment_the_parent_run_says_it_is_the_workspaces(baseline):
    ws, rev = baseline
    _, parent, tags = tracking.pipeline_run("exp", "params.yaml", [])
    run = MlflowClient(store_uri(ws)).get_run(parent)
    key = run.data.tags[tracking.PIPELINE_TAG]
    assert run.info.run_name == f"workspace-{key[:8]}"
    assert tracking.EXP_NAME_TAG not in run.data.tags and tracking.EXP_NAME_TAG not in tags
    assert run.data.tags[tracking.COMMIT_TAG] == rev
    assert run.data.tags["mlflow.note.content"].startswith("`dvc repro` in the workspace")
    assert run.data.params == {}
    # a workspace run keeps the key it had before experiments were named: commit, data, params
    (source,) = tracking.dvc_hashes([tracking.PIPELINE_SOURCE]).values()
    assert key == tracking.pipeline_key(rev, source, (ws / "params.yaml").read_text())
    found = MlflowClient(store_uri(ws)).search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{tracking.EXP_NAME_TAG}` IS NULL"
    )
    assert [r.info.run_id for r in found] == [parent]  # how the UI finds workspace runs


def test_changed_params_compares_dotted_values():
    before = {"a": {"b": 1, "c": [1, 2], "d": {"e": "x"}}, "f": True}
    after = {"a": {"b": 1.0, "c": [1, 3], "d": {"e": "x", "g": None}}}
    assert tracking.changed_params(after, before) == {
        "a.c": "[1, 3]",
        "a.d.g": "None",
        "f": tracking.REMOVED,
    }
    assert tracking.changed_params(before, before) == {}


def test_the_baseline_params_file_missing_or_unreadable(baseline, caplog):
    ws, rev = baseline
    assert tracking.baseline_params(ws / "params.yaml", rev) == BASELINE_PARAMS
    assert tracking.baseline_params(ws / "other.yaml", rev) == {}  # not in that commit
    with caplog.at_level("WARNING"):
        assert tracking.baseline_params(ws / "params.yaml", "0" * 40) is None
    assert f"params.yaml at the experiment's baseline {'0' * 40}" in caplog.text


def test_every_run_of_an_experiment_carries_its_name(baseline, monkeypatch):
    """The stage runs (evaluate, predict, the localizers: child_run), the fold runs
    (MlflowFoldHooks, with pipeline_run's tags) and the comparison's rows
    (log_compare_backbones copies the stage run's dvc.* tags) carry tag dvc.exp_name."""
    import pandas as pd

    from spinegrade.core import vocab
    from spinegrade.evaluation.compare import COLUMNS
    from spinegrade.tracking.comparison import comparison_experiment, log_compare_backbones
    from spinegrade.tracking.hooks import MlflowFoldHooks

    ws, rev = baseline
    _as_set_by_dash_s(ws)
    _in_experiment(monkeypatch, "boot200", rev)
    client = MlflowClient(store_uri(ws))

    with tracking.child_run("exp", "params.yaml", [], "evaluate", "evaluate") as run:
        child = run.info.run_id
    exp, parent, tags = tracking.pipeline_run("exp", "params.yaml", [])
    hooks = MlflowFoldHooks(exp, parent, "spinal", "resnet18", {}, tags, False, (2, 3, 8, 8))
    hooks.start(0)
    fold = mlflow.active_run().info.run_id
    mlflow.end_run()

    group = next(iter(vocab.GROUPS))
    (ws / "models" / group / "resnet18").mkdir(parents=True)
    pd.DataFrame({"study_id": [1], "label": [0]}).to_csv(
        ws / "models" / group / "resnet18" / "oof.csv", index=False
    )
    row = {c: 0.5 for c in COLUMNS} | {"group": group, "model": "resnet18", "verdict": "best"}
    train = type("Train", (), {"backbones": ["resnet18"], "groups": [group]})
    log_compare_backbones(
        "exp", "params.yaml", [], pd.DataFrame([row]), {}, [], ws / "models", ws / "eval", train
    )
    compare_id = client.get_experiment_by_name(comparison_experiment("exp")).experiment_id
    (comparison,) = client.search_runs([compare_id])
    stage = client.search_runs([exp], filter_string="attributes.run_name = 'compare-backbones'")

    for run_id in (child, fold, stage[0].info.run_id, comparison.info.run_id):
        got = client.get_run(run_id).data.tags
        assert got[tracking.EXP_NAME_TAG] == "boot200", got.get("mlflow.runName")
    named = client.search_runs([exp], filter_string=f"tags.`{tracking.EXP_NAME_TAG}` = 'boot200'")
    assert {r.info.run_id for r in named} == {parent, child, fold, stage[0].info.run_id}


def test_headline_metrics_go_on_the_parent_run(baseline):
    ws, _ = baseline
    report = {"spinal": {"model": "resnet18", "rsna_group_term": 0.5, "low": None}, "score": 1}
    parent = tracking.pipeline_run("exp", "params.yaml", [])[1]
    tracking.log_headline(parent, report)
    client = MlflowClient(store_uri(ws))
    assert client.get_run(parent).data.metrics == {"spinal.rsna_group_term": 0.5, "score": 1.0}
    tracking.log_headline(parent, {"score": 0.75})  # the stage ran again
    assert client.get_run(parent).data.metrics["score"] == 0.75
