"""Team operation: a real download tracked by DVC, ``make retrain``, and shared remotes.

The project is a temporary git + DVC copy of this repository (its Makefile, dvc.yaml,
stages, params shrunk to a one-backbone, one-epoch pipeline on a few studies) with
``data.source: rsna`` and the "download" at data/rsna tracked by ``dvc add``. Remotes are
a local folder and an S3 bucket on a moto server on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import free_port, tiny_synthetic

from spinegrade.synthetic.dataset import generate_dataset

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
DVC = str(Path(sys.executable).parent / "dvc")

pytestmark = [pytest.mark.dvc, pytest.mark.server]  # S3 remotes: a moto server

# Training studies left out of the first release of the "download", added in the second.
LATE_STUDIES = 2

# Files whose mtime would make make rebuild the venv (the copy must reuse this one).
VENV_INPUTS = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")


# An outer `make test ARGS=...` hands its command-line variables to every make below it
# through these, and exports ARGS itself into its recipes' environment: `make retrain` here
# must not inherit the test run's ARGS.
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS")


def env() -> dict[str, str]:
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "GITHUB_")) and k not in MAKE_VARIABLES
    }
    out["PATH"] = f"{Path(sys.executable).parent}:{out['PATH']}"
    return out


def sh(cwd: Path, *cmd: str, check: bool = True, timeout: int = 900, **kw):
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=kw.pop("env", None) or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def dvc(cwd: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return sh(cwd, DVC, *args, check=check, **kw)


def retrain(cwd: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """``make retrain`` in the copy, on this repository's virtualenv."""
    extra = [f"ARGS={' '.join(args)}"] if args else []
    return sh(
        cwd, "make", "--no-print-directory", "retrain", f"VENV={VENV}", *extra, check=check, **kw
    )


def ran(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.split("'")[1] for ln in proc.stdout.splitlines() if ln.startswith("Running stage")]


def stale(cwd: Path) -> list[str]:
    """What make retrain will re-run, as it computes it (dvc status + the DAG)."""
    code = "from spinegrade.cli.retrain import stale_stages; print(*stale_stages())"
    return sh(cwd, sys.executable, "-c", code).stdout.split()


def status(cwd: Path) -> dict:
    return json.loads(dvc(cwd, "status", "--json").stdout or "{}")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- the download


def release(full: Path, dest: Path, drop: int) -> None:
    """Write the download to ``dest``: ``full`` without its last ``drop`` training studies."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(full, dest)
    if not drop:
        return
    studies = sorted(int(p.name) for p in (full / "train_images").iterdir())[-drop:]
    for study in studies:
        shutil.rmtree(dest / "train_images" / str(study))
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"):
        df = pd.read_csv(full / name)
        df[~df["study_id"].isin(studies)].to_csv(dest / name, index=False)


def shrink(params: dict) -> None:
    params["data"].update(source="rsna", root="data/rsna")
    params["convert-dicom"]["workers"] = 1
    params["split-folds"]["n_folds"] = 3
    tpc = params["train-per-condition"]
    tpc["backbones"] = ["resnet50"]
    tpc["training"].update(epochs=1, batch_size=16, log_model=False)
    loc = params["train-localizer"]
    loc.update(batch_size=8, decoder_channels=8)
    for inp in loc["inputs"].values():
        inp.update(image_px=64, epochs=1)
    params["predict"]["explain"] = False


def make_project(dest: Path) -> Path:
    """A git + DVC copy of this repository (code, Makefile, pipeline) with shrunken params."""
    dest.mkdir(parents=True)
    for name in ("dvc.yaml", "Makefile", ".dvcignore", ".gitignore", *VENV_INPUTS):
        shutil.copy(REPO / name, dest / name)
        os.utime(dest / name, (0, 0))
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data").mkdir()
    shutil.copy(REPO / "data" / ".gitignore", dest / "data" / ".gitignore")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["engine"]["device"] = "cpu"  # byte-identical outputs are promised on CPU only
    # tiny crops reach 1x1 feature maps, where oneDNN's bf16 backward returned NaN gradients
    params["engine"]["precision"] = "fp32"
    shrink(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "config", "user.email", "ci@example.invalid")
    sh(dest, "git", "config", "user.name", "ci")
    dvc(dest, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    return dest


def git_clone(src: Path, dest: Path) -> None:
    """``git clone``, with the venv's inputs made old: a clone's fresh mtimes would make
    ``make`` reinstall this repository's virtualenv from the clone."""
    sh(dest.parent, "git", "clone", "-q", str(src), str(dest))
    for name in VENV_INPUTS:
        os.utime(dest / name, (0, 0))


def track(work: Path) -> None:
    """The README's steps: ``dvc add`` (copies into the cache), then relink the workspace
    to the cache, so the download is on disk once."""
    dvc(work, "add", "-q", "data/rsna")
    dvc(work, "checkout", "-q", "--relink", "data/rsna.dvc")


def commit(cwd: Path, message: str) -> None:
    sh(cwd, "git", "add", "-A")
    sh(cwd, "git", "commit", "-qm", message)


@pytest.fixture(scope="module")
def full_download(tmp_path_factory) -> Path:
    cfg = tiny_synthetic(n_train_studies=9 + LATE_STUDIES, n_test_studies=2)
    return generate_dataset(cfg, tmp_path_factory.mktemp("download") / "rsna")


@pytest.fixture(scope="module")
def team(tmp_path_factory, full_download) -> dict:
    """The first release added, committed and retrained into a local remote."""
    root = tmp_path_factory.mktemp("team")
    work = make_project(root / "work")
    remote = root / "remote"
    remote.mkdir()
    release(full_download, work / "data" / "rsna", drop=LATE_STUDIES)
    track(work)
    dvc(work, "remote", "add", "-d", "shared", str(remote))
    commit(work, "first release of the download")
    summary = root / "summary.md"
    first = retrain(work, env={**env(), "GITHUB_STEP_SUMMARY": str(summary)})
    commit(work, "retrained")
    return {"work": work, "remote": remote, "first": first, "summary": summary}


# --------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_dvc_add_reads_the_download_in_place_through_cache_links(team):
    work = team["work"]
    pointer = yaml.safe_load((work / "data" / "rsna.dvc").read_text())
    assert pointer["outs"][0]["path"] == "rsna" and pointer["outs"][0]["md5"].endswith(".dir")
    # data/.gitignore ignores the download but not its pointer file.
    tracked = sh(work, "git", "ls-files", "data").stdout.split()
    assert "data/rsna.dvc" in tracked and not any(t.startswith("data/rsna/") for t in tracked)
    # cache.type reflink,hardlink,...: the workspace file *is* the cached object (no copy).
    dicom = next((work / "data" / "rsna" / "train_images").rglob("*.dcm"))
    assert dicom.stat().st_nlink >= 2
    assert any(
        p.stat().st_ino == dicom.stat().st_ino
        for p in (work / ".dvc" / "cache").rglob("*")
        if p.is_file()
    )


@pytest.mark.slow
def test_first_retrain_runs_every_stage_and_pushes_outputs_and_run_cache(team):
    first, remote = team["first"], team["remote"]
    stages = [n for n in yaml.safe_load((team["work"] / "dvc.yaml").read_text())["stages"]]
    assert {r.split("@")[0] for r in ran(first)} == set(stages)
    assert "files pushed" in first.stdout
    assert any(p.parts[0] == "runs" for p in map(Path, files(remote)))  # the run-cache
    summary = team["summary"].read_text()
    assert "## spinegrade retrain" in summary and "### Metrics against" in summary
    assert "| group" in summary and "| model" in summary  # the comparison table
    assert "re-run: `synthesize`, `ingest`" in summary


@pytest.mark.slow
def test_nothing_changed_runs_nothing_and_pushes_nothing(team):
    work, remote = team["work"], team["remote"]
    before = files(remote)
    proc = retrain(work)
    assert ran(proc) == []
    assert "stale stages: none" in proc.stdout and "files pushed: 0" in proc.stdout
    assert files(remote) == before


@pytest.mark.slow
def test_new_release_reruns_exactly_ingest_onwards_and_pushes(team, full_download):
    work, remote = team["work"], team["remote"]
    release(full_download, work / "data" / "rsna", drop=0)  # two studies added
    # dvc status sees the download changed (the pointer file's and ingest's dependency) ...
    changed = status(work)
    assert {"data/rsna.dvc", "ingest", "convert-dicom"} <= set(changed)
    track(work)
    assert sh(work, "git", "status", "--porcelain").stdout.split() == ["M", "data/rsna.dvc"]
    # ... and every stage after ingest is stale through the DAG; synthesize is not.
    expected = stale(work)
    nodes = [
        ln.strip('";')
        for ln in dvc(work, "dag", "--dot").stdout.splitlines()
        if ln.endswith('";') and "->" not in ln
    ]
    assert expected == [n for n in nodes if n not in ("synthesize", "data/rsna.dvc")]
    before = files(remote)
    proc = retrain(work)
    assert ran(proc) == expected
    assert files(remote) > before
    labels = pd.read_csv(work / "data" / "ingest" / "labels.csv")
    assert labels["study_id"].nunique() == 9 + LATE_STUDIES
    commit(work, "second release")


@pytest.mark.slow
def test_interrupted_between_repro_and_push_pushes_what_is_missing(team):
    """predict's new outputs reach the remote with the next retrain. (predict has no
    run-cache entry to push: DVC keeps none for a stage with an uncached output that is not
    a metric or plot, and its detailed report is one, committed beside the DVC metrics.)"""
    work, remote = team["work"], team["remote"]
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["predict"]["review"] = False  # no review page: another data/predict
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = files(remote)
    cut = retrain(work, "--no-push")  # its repro finished, its push never ran
    assert ran(cut) == ["predict"] and files(remote) == before
    again = retrain(work)
    assert ran(again) == []
    assert not re.search(r"^0 files pushed", again.stdout, re.M), again.stdout[-2000:]
    new = files(remote) - before
    assert new and {Path(f).parts[0] for f in new} == {"files"}  # data/predict's new objects
    commit(work, "predict without its review page")


@pytest.mark.slow
def test_teammate_clone_pulls_and_repro_runs_nothing(team, tmp_path):
    work = team["work"]
    clone = tmp_path / "clone"
    git_clone(work, clone)
    dvc(clone, "pull")
    assert (clone / "data" / "crops").is_dir() and (clone / "models").is_dir()
    proc = dvc(clone, "repro")
    assert ran(proc) == [] and "up to date" in proc.stdout


@pytest.mark.slow
def test_pull_from_an_emptied_cache_and_workspace_then_repro_runs_nothing(team):
    work = team["work"]
    shutil.rmtree(work / ".dvc" / "cache")
    for out in ("data/ingest", "data/volumes", "data/crops", "models", "localizers"):
        shutil.rmtree(work / out)
    dvc(work, "pull")
    assert ran(dvc(work, "repro")) == []
    assert status(work) == {}


@pytest.mark.slow
def test_a_remote_missing_an_object_is_named(team, tmp_path):
    work, remote = team["work"], team["remote"]
    broken = tmp_path / "broken-remote"
    shutil.copytree(remote, broken)
    pointer = yaml.safe_load((work / "data" / "rsna.dvc").read_text())["outs"][0]["md5"]
    obj = broken / "files" / "md5" / pointer[:2] / pointer[2:]
    obj.unlink()  # the download's directory listing
    clone = tmp_path / "clone"
    git_clone(work, clone)
    dvc(clone, "remote", "add", "-d", "--local", "shared", str(broken))
    t0 = time.monotonic()
    proc = retrain(clone, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60
    assert "could not pull the tracked data" in proc.stderr and "data/rsna" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_unreachable_s3_remote_is_one_line_naming_the_endpoint(team, tmp_path):
    work = team["work"]
    clone = tmp_path / "clone"
    git_clone(work, clone)
    port = free_port()  # nothing listens there
    dvc(clone, "remote", "add", "-d", "--local", "dead", "s3://spinegrade/dvc")
    dvc(clone, "remote", "modify", "--local", "dead", "endpointurl", f"http://127.0.0.1:{port}")
    creds = {**env(), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    t0 = time.monotonic()
    proc = retrain(clone, check=False, env=creds)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (clone / "data" / "rsna").exists()  # nothing half-written


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture()
def s3(tmp_path):
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    import boto3  # requirements.txt
    from moto.server import ThreadedMotoServer  # requirements-dev.txt

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="spinegrade")
        yield url
    finally:
        server.stop()


@pytest.mark.slow
def test_s3_remote_roundtrip_as_the_readme_configures_it(team, s3, tmp_path):
    work = team["work"]
    clone = tmp_path / "clone"
    git_clone(work, clone)
    dvc(clone, "pull", "-r", "shared")  # from the local remote, then to S3 as the README says
    dvc(clone, "remote", "add", "-d", "--local", "team-s3", "s3://spinegrade/dvc")
    dvc(clone, "remote", "modify", "--local", "team-s3", "endpointurl", s3)
    dvc(clone, "remote", "modify", "--local", "team-s3", "access_key_id", "testing")
    dvc(clone, "remote", "modify", "--local", "team-s3", "secret_access_key", "testing")
    pushed = dvc(clone, "push", "--run-cache")
    assert "files pushed" in pushed.stdout
    shutil.rmtree(clone / ".dvc" / "cache")
    for out in ("data/rsna", "data/ingest", "data/volumes", "data/crops", "models"):
        shutil.rmtree(clone / out)
    dvc(clone, "pull", "--run-cache")
    assert ran(dvc(clone, "repro")) == []
    assert status(clone) == {}


@pytest.mark.slow
def test_missing_s3_credentials_are_one_line_naming_the_remote(team, s3, tmp_path):
    clone = tmp_path / "clone"
    git_clone(team["work"], clone)
    dvc(clone, "remote", "add", "-d", "--local", "team-s3", "s3://spinegrade/dvc")
    dvc(clone, "remote", "modify", "--local", "team-s3", "endpointurl", s3)
    bare = {k: v for k, v in env().items() if not k.startswith("AWS_")}
    bare |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    t0 = time.monotonic()
    proc = retrain(clone, check=False, env=bare)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    error = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith("make")]
    assert len(error) == 1 and "remote 'team-s3 (s3://spinegrade/dvc)'" in error[0]
    assert "Unable to locate credentials" in error[0]


# --------------------------------------------------------------------------- changes seen


def _change_one_dicom(root: Path, how: str) -> None:
    dicoms = sorted((root / "train_images").rglob("*.dcm"))
    if how == "replace":
        dicoms[0].unlink()  # not in place: the tracked file may be a read-only cache link
        shutil.copy(dicoms[1], dicoms[0])
    elif how == "add":
        shutil.copy(dicoms[0], dicoms[0].with_name("9999.dcm"))
    else:
        dicoms[-1].unlink()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["replace", "add", "delete"])
def test_a_changed_dicom_outside_the_workspace_makes_ingest_stale(tmp_path, full_download, how):
    download = tmp_path / "mount" / "rsna"  # e.g. a read-only team mount
    shutil.copytree(full_download, download)
    work = make_project(tmp_path / "work")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["root"] = str(download)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(work, "repro", "convert-dicom")
    assert not {"ingest", "convert-dicom"} & set(status(work))
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]["ingest"]
    assert str(download) in [d["path"] for d in lock["deps"]]
    _change_one_dicom(download, how)
    changed = status(work)
    assert {"ingest", "convert-dicom"} <= set(changed)
    assert str(download) in json.dumps(changed["ingest"])  # the dependency that changed


@pytest.mark.slow
def test_a_truncated_dicom_in_the_tracked_download_is_named(tmp_path, full_download):
    work = make_project(tmp_path / "work")
    release(full_download, work / "data" / "rsna", drop=0)
    dvc(work, "add", "-q", "data/rsna")
    dvc(work, "repro", "convert-dicom")
    victim = sorted((work / "data" / "rsna" / "train_images").rglob("*.dcm"))[3]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    assert {"ingest", "convert-dicom"} <= set(status(work))
    proc = dvc(work, "repro", "convert-dicom", check=False)
    assert proc.returncode != 0
    assert "Running stage 'ingest'" in proc.stdout
    assert victim.name in proc.stderr + proc.stdout
    assert str(victim.relative_to(work / "data" / "rsna").parent) in proc.stderr + proc.stdout
