"""The whole pipeline, shrunken: every stage through `dvc repro`, MLflow in a temp dir.

Tiny synthetic data, one epoch, the default backbones at the configured crop size. Checks
what a researcher relies on: every output, one parent MLflow run with a nested run per
(group, backbone, fold) carrying params, per-epoch metrics, provenance, the confusion
matrix and the model, that a training param change re-runs only training onwards, and
that editing any module re-runs exactly the stages whose import closure holds it.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import (
    GIT_IDENTITY,
    REPO,
    copy_workspace,
    git_workspace,
    project_warnings_as_errors,
    repro_console,
    run_dvc,
)
from mlflow.tracking import MlflowClient

from spinegrade.core import vocab
from spinegrade.tracking.store import (
    EXP_NAME_TAG,
    HOST_TAG,
    PID_TAG,
    PROCESS_START_TAG,
    ROLE_TAG,
    TRAINED_IN_TAG,
)

pytestmark = pytest.mark.dvc

DATA_STAGES = ("ingest", "convert-dicom", "crop-rois", "split-folds")


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline) -> Path:
    """The session's finished tiny pipeline (conftest.tiny_pipeline), read only."""
    return tiny_pipeline


def _params(work: Path) -> dict:
    return yaml.safe_load((work / "params.yaml").read_text())


@pytest.mark.slow
def test_every_stage_output_exists(pipeline):
    p = _params(pipeline)["train-per-condition"]
    for g in p["groups"]:
        for b in p["backbones"]:
            out = pipeline / "models" / g / b
            assert {
                "oof.csv",
                "inner.csv",
                "history.csv",
                "metrics.json",
                "fold0.safetensors",
                "fold1.safetensors",
            } <= {f.name for f in out.iterdir()}
            oof, inner = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "inner.csv")
            history = pd.read_csv(out / "history.csv")  # one run's curve under both folds
            assert set(history["fold"]) == {0, 1} and set(history["run_folds"]) == {"0+1"}
            assert set(oof["fold"]) == {0, 1}  # the default pair: each chose for the other
            for fold in (0, 1):
                chose = inner[inner["fold"] == fold]
                assert (chose["inner_fold"] == 1 - fold).all()
                scored = oof.loc[oof["fold"] == fold, "study_id"]
                assert not set(scored) & set(chose["study_id"])  # chose nothing scored
            for cols in (vocab.SEVERITY_COLUMNS, vocab.RAW_SEVERITY_COLUMNS):
                assert oof[list(cols)].sum(axis=1).round(6).eq(1).all()
            assert (
                json.loads((out / "metrics.json").read_text())["folds"]["fold0"]["temperature"] > 0
            )
    for b in [*p["backbones"], vocab.ENSEMBLE]:
        sub = pd.read_csv(pipeline / "data" / "evaluate" / f"oof_submission_{b}.csv")
        assert list(sub.columns) == list(vocab.SUBMISSION_HEADER)
        assert len(sub) % 25 == 0 and sub["row_id"].is_unique


@pytest.mark.slow
def test_localizers_and_predict_outputs(pipeline):
    for series in _params(pipeline)["train-localizer"]["series"]:
        out = pipeline / "localizers" / series
        assert {"localizer.json", "weights.safetensors", "metrics.json", "errors.csv"} <= {
            f.name for f in out.iterdir()
        }
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["point_error_mm_p90"] >= metrics["point_error_mm_median"] >= 0
    sub = pd.read_csv(pipeline / "data" / "predict" / "submission.csv")
    assert list(sub.columns) == list(vocab.SUBMISSION_HEADER)
    # the backbone was chosen on out-of-fold training studies; its reported score is on
    # test studies none of which trained, chose an epoch, a temperature or the backbone
    trained = set(pd.read_csv(pipeline / "data" / "ingest" / "labels.csv")["study_id"])
    tested = {int(r.split("_")[0]) for r in sub["row_id"]}
    assert tested and not tested & trained
    assert len(sub) == 25 * 2 and sub["row_id"].is_unique
    report = json.loads((pipeline / "reports" / "predict.json").read_text())
    assert report["studies"] == 2 and report["rows"] == 50
    assert set(report["rsna_score"]) == {"localized", "labelled_points", "class_prior"}
    for key, ci in report["rsna_score_ci"].items():
        assert ci["score"]["estimate"] == pytest.approx(report["rsna_score"][key]["score"])
        assert ci["score"]["low"] <= ci["score"]["estimate"] <= ci["score"]["high"]
    assert report["localization"]["all"]["points"] > 0
    assert list((pipeline / "data" / "predict" / "explain").rglob("*.png"))
    page = (pipeline / "data" / "predict" / "review.html").read_text()
    for study in tested:  # the review page: each test study, with the header's scores
        assert f'id="study-{study}"' in page
    assert "rsna score, localized" in page


@pytest.mark.slow
def test_evaluate_reports_the_official_score_and_metrics(pipeline):
    report = json.loads((pipeline / "reports" / "evaluate.json").read_text())
    p = _params(pipeline)["train-per-condition"]
    assert set(report["models"]) == {*p["backbones"], vocab.ENSEMBLE}
    for entry in report["models"].values():
        assert set(entry["rsna"]) == {"score", "spinal", "foraminal", "subarticular", "any_severe"}
        assert entry["rsna"]["score"] == pytest.approx(
            sum(entry["rsna"][t] for t in ("spinal", "foraminal", "subarticular", "any_severe")) / 4
        )
        for g in p["groups"]:
            m = entry["groups"][g]
            assert {"accuracy", "macro_recall", "macro_f1", "per_class", "confusion"} <= set(m)
            assert {"ece", "ece_raw", "rsna_term_raw", "ci"} <= set(m)
        assert entry["rsna_ci"]["score"]["low"] <= entry["rsna"]["score"]
    assert "score" in report["class_prior_baseline"]
    confusions = list((pipeline / "reports" / "confusion").glob("*.csv"))
    assert len(confusions) == len(p["groups"]) * (len(p["backbones"]) + 1)  # + the ensemble
    # per group a PNG, and per (group, model) the calibrated points for `dvc plots diff`
    plots = {f.name for f in (pipeline / "reports" / "calibration").iterdir()}
    models = [*p["backbones"], vocab.ENSEMBLE]
    assert plots == {f"{g}.png" for g in p["groups"]} | {
        f"{g}-{m}.csv" for g in p["groups"] for m in models
    }
    points = pd.read_csv(pipeline / "reports" / "calibration" / f"spinal-{vocab.ENSEMBLE}.csv")
    assert list(points.columns) == ["bin", "confidence", "accuracy", "count"]
    assert points["confidence"].between(0, 1).all() and (points["count"] > 0).all()


@pytest.mark.slow
def test_comparison_table(pipeline):
    table = pd.read_csv(pipeline / "reports" / "compare-backbones.csv")
    p = _params(pipeline)["train-per-condition"]
    assert len(table) == len(p["groups"]) * (len(p["backbones"]) + 1)  # + the ensemble
    assert set(table["verdict"]) <= {"best", "worse", "not distinguishable"}
    assert (table.groupby("group")["verdict"].apply(lambda v: (v == "best").sum()) == 1).all()
    assert (table["rsna_group_term_low"] <= table["rsna_group_term"]).all()
    assert (table["gflops"] > 0).all()
    pd.testing.assert_series_equal(
        table["recall_per_gflop"], table["macro_recall"] / table["gflops"], check_names=False
    )
    md = (pipeline / "reports" / "compare-backbones.md").read_text()
    assert "GFLOPs" in md and "multiply-add = 2" in md and "Paired differences" in md
    pairs = pd.read_csv(pipeline / "reports" / "compare-backbones-paired.csv")
    n = len(p["backbones"]) + 1
    assert len(pairs) == len(p["groups"]) * n * (n - 1) // 2
    assert (pipeline / "reports" / "compare-backbones.png").stat().st_size > 1000


@pytest.mark.slow
def test_mlflow_runs_nested_under_one_parent(pipeline):
    client = MlflowClient(f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(_params(pipeline)["mlflow"]["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("spinegrade.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    p = _params(pipeline)["train-per-condition"]
    expected = {f"{g}-{b}-fold{k}" for g in p["groups"] for b in p["backbones"] for k in (0, 1)}
    expected |= {f"localizer-{s}" for s in _params(pipeline)["train-localizer"]["series"]}
    assert expected | {"evaluate", "compare-backbones", "predict"} == set(children)
    run = children[f"spinal-{p['backbones'][0]}-fold0"]
    assert run.data.params["training.loss"] == "weighted_ce"
    assert "recipe.lr" in run.data.params
    assert {"final_gflops", "final_params", "final_macro_recall", "val_loss"} <= set(
        run.data.metrics
    )
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1  # one epoch
    assert run.data.tags["git_commit"]
    assert run.data.tags["dvc.data/crops"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "confusion_matrix.png" in artifacts
    logged = client.search_logged_models(
        [exp.experiment_id], filter_string=(f"source_run_id = '{run.info.run_id}'")
    )
    assert bool(logged) == p["training"]["log_model"]  # test_tracking loads one back
    inputs = {d.dataset.name for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert inputs == {"spinal crops", "folds"}  # the Dataset column of the fold runs
    compare = {a.path for a in client.list_artifacts(children["compare-backbones"].info.run_id)}
    assert {"compare-backbones.csv", "compare-backbones.md", "compare-backbones.png"} <= compare
    loc = children["localizer-sagittal_t2"]
    assert {"final_point_error_mm_median", "final_point_error_mm_p90", "final_heatmap_dice"} <= set(
        loc.data.metrics
    )
    predict = children["predict"]
    assert {
        "rsna_score.localized.score",
        "rsna_score.labelled_points.score",
        "rsna_score.class_prior.score",
        "localization.all.error_mm_median",
        "localization.all.error_mm_p90",
    } <= set(predict.data.metrics)
    assert {"submission.csv", "review.html"} <= {
        a.path for a in client.list_artifacts(predict.info.run_id)
    }
    second = children[f"spinal-{p['backbones'][0]}-fold1"]  # the pair's second fold
    assert len(client.get_metric_history(second.info.run_id, "train_loss")) == 1
    assert second.data.tags[TRAINED_IN_TAG] == run.info.run_id  # it trained no model itself
    assert TRAINED_IN_TAG not in run.data.tags
    for r in children.values():  # every run names the process that logged it
        assert {HOST_TAG, PID_TAG, PROCESS_START_TAG} <= set(r.data.tags)
    assert second.data.metrics["final_inner_fold"] == 0


@pytest.mark.slow
def test_training_param_change_reruns_only_training_onwards(pipeline, tmp_path):
    pipeline = copy_workspace(pipeline, tmp_path / "work")
    status = run_dvc(pipeline, "status")
    assert "up to date" in status.stdout, status.stdout
    params = _params(pipeline)
    params["train-per-condition"]["training"]["epochs"] = 2
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run_dvc(pipeline, "status").stdout
    assert "train-per-condition@" in status
    for stage in DATA_STAGES:
        assert f"{stage}:" not in status, status
    assert "train-localizer@" not in status, status
    assert "predict:" in status


@pytest.mark.slow
def test_predict_registers_the_study_grader_that_grades_as_predict_did(
    pipeline, monkeypatch, no_tracking_uri
):
    """predict registers the whole grader as {experiment}-study@champion, logged in its
    run; loaded from the registry it gives the held-out studies predict's own rows."""
    import mlflow
    import numpy as np

    monkeypatch.chdir(pipeline)
    uri = f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name = f"{_params(pipeline)['mlflow']['experiment']}-study"
    version = MlflowClient(uri).get_model_version_by_alias(name, "champion")
    predict_run = MlflowClient(uri).get_run(version.run_id)
    assert predict_run.info.run_name == "predict"
    assert name in predict_run.data.tags["study_model"]
    series = pd.read_csv(pipeline / "data" / "raw" / "test_series_descriptions.csv")
    rows = []
    for r in series.itertuples(index=False):
        folder = pipeline / "data" / "raw" / "test_images" / str(r.study_id) / str(r.series_id)
        for f in sorted(folder.glob("*.dcm")):
            rows.append({"dicom": f.read_bytes(), "series_id": str(r.series_id)})
            rows[-1]["study_id"] = str(r.study_id)
    got = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(pd.DataFrame(rows))
    want = pd.read_csv(pipeline / "data" / "predict" / "submission.csv")
    assert got["row_id"].tolist() == want["row_id"].tolist()
    columns = list(vocab.SEVERITY_COLUMNS)
    np.testing.assert_allclose(got[columns].to_numpy(float), want[columns].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_comparison_runs_and_the_registered_choice(pipeline):
    """The comparison experiment: one flat run per (group, model) with the headline metrics
    and its dataset; each group's best model registered with alias champion."""
    client = MlflowClient(f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}")
    name = _params(pipeline)["mlflow"]["experiment"]
    exp = client.get_experiment_by_name(f"{name}-comparison")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    p = _params(pipeline)["train-per-condition"]
    models = [*p["backbones"], vocab.ENSEMBLE]
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"{g} / {m}" for g in p["groups"] for m in models
    )
    table = pd.read_csv(pipeline / "reports" / "compare-backbones.csv")
    for r in runs:
        assert "mlflow.parentRunId" not in r.data.tags  # flat: nothing to expand
        row = table[
            (table["group"] == r.data.tags["group"]) & (table["model"] == r.data.tags["model"])
        ]
        assert r.data.metrics["rsna_group_term"] == pytest.approx(row["rsna_group_term"].item())
        assert {"macro_recall", "macro_f1", "gflops", "recall_per_gflop"} <= set(r.data.metrics)
        assert r.inputs.dataset_inputs, "no dataset logged"
    for group in p["groups"]:
        best = table[(table["group"] == group) & (table["verdict"] == "best")]["model"].item()
        version = client.get_model_version_by_alias(f"{name}-{group}", "champion")
        assert version.tags["model"] == best
    choice = json.loads((pipeline / "data" / "compare-backbones" / "choice.json").read_text())
    assert choice == {  # only the model per group: what predict reads
        g: client.get_model_version_by_alias(f"{name}-{g}", "champion").tags["model"]
        for g in p["groups"]
    }


def _numbers(tree) -> list[float]:
    """The numeric leaves of a parsed JSON tree (booleans are not numbers here)."""
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    if isinstance(tree, list):
        return [n for v in tree for n in _numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.mark.slow
def test_dvc_compares_a_headline_that_equals_the_reports(pipeline):
    """`dvc metrics show` (what `dvc exp show` and `dvc metrics diff` compare) holds the two
    summaries, at most 30 numbers, and each equals the report it summarizes."""
    proc = run_dvc(pipeline, "metrics", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)[""]["data"]  # "": the workspace
    comparison = shown["reports/metrics/comparison.json"]["data"]
    held_out = shown["reports/metrics/held-out.json"]["data"]
    assert len(shown) == 2
    assert len(_numbers(comparison)) + len(_numbers(held_out)) <= 30
    report = json.loads((pipeline / "reports" / "compare-backbones.json").read_text())
    rows = {tuple(key.split(".", 1)): row for key, row in report.items()}  # (group, model)
    p = _params(pipeline)["train-per-condition"]
    assert sorted(comparison["groups"]) == sorted(p["groups"])
    for group, chosen in comparison["groups"].items():
        row = rows[(group, chosen["model"])]
        assert row["verdict"] == "best"
        for key in ("rsna_group_term", "rsna_group_term_low", "rsna_group_term_high"):
            assert chosen[key] == pytest.approx(row[key]), (group, key)
    assert sorted(comparison["models"]) == sorted([*p["backbones"], vocab.ENSEMBLE])
    for model, numbers in comparison["models"].items():
        mine = [r for (_, m), r in rows.items() if m == model]
        assert numbers["rsna_score"] == pytest.approx(mine[0]["rsna_score"])
        recall = sum(r["macro_recall"] for r in mine) / len(mine)  # the mean over groups
        assert numbers["mean_macro_recall"] == pytest.approx(recall)
    choice = json.loads((pipeline / "data" / "compare-backbones" / "choice.json").read_text())
    assert choice == {g: c["model"] for g, c in comparison["groups"].items()}
    predicted = json.loads((pipeline / "reports" / "predict.json").read_text())
    assert held_out == {
        "rsna_score": pytest.approx(predicted["rsna_score"]["localized"]["score"]),
        "point_error_mm_median": pytest.approx(predicted["localization"]["all"]["error_mm_median"]),
    }
    # one lookup from the summary back to MLflow: the pipeline's parent run
    client = MlflowClient(f"sqlite:///{pipeline / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(comparison["mlflow_parent_run"])
    assert parent.data.tags["spinegrade.role"] == "parent"
    assert (
        parent.info.experiment_id
        == client.get_experiment_by_name(_params(pipeline)["mlflow"]["experiment"]).experiment_id
    )
    # and the parent run holds the same headline, so the parent runs compare pipeline runs
    logged = parent.data.metrics
    assert logged["held_out.rsna_score"] == pytest.approx(held_out["rsna_score"])
    for group, chosen in comparison["groups"].items():
        assert logged[f"groups.{group}.rsna_group_term"] == pytest.approx(chosen["rsna_group_term"])
    for model, numbers in comparison["models"].items():
        assert logged[f"models.{model}.rsna_score"] == pytest.approx(numbers["rsna_score"])


def test_only_the_summaries_are_dvc_metrics():
    """Every stage report stays an output, committed and not cached, but only the two
    summaries under reports/metrics/ are declared metrics."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    metrics = {
        path: props
        for stage in stages.values()
        for entry in stage.get("metrics", [])
        for path, props in entry.items()
    }
    assert metrics == {
        "reports/metrics/comparison.json": {"cache": False},
        "reports/metrics/held-out.json": {"cache": False},
    }
    reports = {
        path: props
        for stage in stages.values()
        for entry in stage.get("outs", [])
        if isinstance(entry, dict)
        for path, props in entry.items()
        if path.startswith("reports/")
    }
    for name in ("ingest", "convert-dicom", "crop-rois", "split-folds", "evaluate", "predict"):
        assert reports[f"reports/{name}.json"] == {"cache": False}, name
    assert reports["reports/compare-backbones.json"] == {"cache": False}


@pytest.mark.slow
def test_new_intervals_rerun_evaluate_and_compare_but_not_predict(pipeline, tmp_path):
    """Changing evaluate.bootstrap_resamples moves the intervals, not the chosen models:
    evaluate and compare-backbones re-run, and predict, which reads only the choice, does
    not."""
    work = copy_workspace(pipeline, tmp_path / "work")
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    choice = (work / "data" / "compare-backbones" / "choice.json").read_text()
    params = _params(work)
    params["evaluate"]["bootstrap_resamples"] = 200
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_dvc(work, "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert after["evaluate"]["params"]["params.yaml"]["evaluate"]["bootstrap_resamples"] == 200
    assert after["evaluate"] != lock["evaluate"]
    assert after["compare-backbones"] != lock["compare-backbones"]
    assert after["predict"] == lock["predict"]
    assert "Running stage 'evaluate'" in proc.stdout
    assert "Running stage 'compare-backbones'" in proc.stdout
    assert "Running stage 'predict'" not in proc.stdout
    assert (work / "data" / "compare-backbones" / "choice.json").read_text() == choice
    report = json.loads((work / "reports" / "evaluate.json").read_text())
    assert report["bootstrap"]["resamples"] == 200
    # the summary names the new parent run, in the copy's own store
    summary = json.loads((work / "reports" / "metrics" / "comparison.json").read_text())
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    assert client.get_run(summary["mlflow_parent_run"]).data.tags["spinegrade.role"] == "parent"
    assert "up to date" in run_dvc(work, "status").stdout


@pytest.mark.slow
def test_a_queued_sweep_reruns_only_the_swept_backbone(pipeline, tmp_path):
    """`make sweep` of two learning rates of one backbone, in a git clone of the tiny
    pipeline: DVC queues and runs two experiments named after their value; `dvc exp show
    --only-changed` compares them in a few columns, the headline numbers included. One value
    is the baseline's: that experiment runs nothing (every stage is up to date, so no MLflow
    run carries its name). The other has an MLflow parent run of its name, and only the
    swept backbone trained again (the other backbones' jobs came from the DVC cache), with
    evaluate and compare-backbones once."""
    # the baseline as built (up to date: an edit of params here would make every
    # experiment re-run the stages it reaches)
    work = git_workspace(copy_workspace(pipeline, tmp_path / "work"))
    params = _params(work)
    p = params["train-per-condition"]
    swept, others = p["backbones"][0], p["backbones"][1:]
    lr = p["recipes"][swept]["lr"]
    env = os.environ | GIT_IDENTITY | {"PYTHONWARNINGS": project_warnings_as_errors()}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = [sys.executable, "-m", "spinegrade.cli.sweep", "--name", "t"]
    sweep += ["-S", f"train-per-condition.recipes.{swept}.lr={lr},{lr * 2}"]
    proc = subprocess.run(sweep, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    same, changed = names = [f"t-lr-{lr}", f"t-lr-{lr * 2}"]

    shown = run_dvc(work, "exp", "show", "--only-changed", "--csv", env=GIT_IDENTITY)
    assert shown.returncode == 0, shown.stderr
    rows = list(csv.DictReader(io.StringIO(shown.stdout)))
    assert len(rows[0]) <= 40, list(rows[0])
    by_name = {r["Experiment"]: r for r in rows if r["Experiment"]}
    assert sorted(by_name) == sorted(names), shown.stdout
    (score,) = [c for c in rows[0] if c.endswith(f"models.{swept}.rsna_score")]
    assert f"train-per-condition.recipes.{swept}.lr" in rows[0]
    for name in names:
        assert float(by_name[name][score]) > 0, (name, by_name[name])

    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    (exp,) = [e.experiment_id for e in client.search_experiments() if e.name == "spinegrade"]

    def runs(name: str) -> list:
        return client.search_runs([exp], filter_string=f"tags.`{EXP_NAME_TAG}` = '{name}'")

    assert runs(same) == []
    mine = runs(changed)
    roles = [r.data.tags[ROLE_TAG] for r in mine]
    parents = [r for r in mine if r.data.tags[ROLE_TAG] == "parent"]
    assert [r.info.run_name for r in parents] == [changed]
    trained = {r.data.tags["backbone"] for r in mine if r.data.tags[ROLE_TAG] == "train"}
    assert trained == {swept}, f"{changed} trained {trained}, not only {swept}"
    assert set(others).isdisjoint(trained)
    assert roles.count("evaluate") == 1 and roles.count("compare") == 1, roles


def test_every_stage_that_logs_to_mlflow_runs_in_a_fresh_clone():
    """A stage whose outputs are all committed (cache: false) is up to date in a fresh
    clone, so `dvc repro` would skip it and its MLflow runs would never reach the clone's
    store: every stage that logs to MLflow needs one cached output."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if "mlflow" not in stage.get("params", []):
            continue
        outs = [o for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]
        cached = [
            o for o in outs if isinstance(o, str) or next(iter(o.values())).get("cache", True)
        ]
        assert cached, f"stage {name} logs to MLflow but has no cached output"


# --- editing a module re-runs exactly the stages that execute it ---------------------------
# In a copy of the session's finished tiny pipeline, each file under src/ in turn gets a
# comment appended; DVC's own status must then name exactly the stages whose import closure
# (scripts/stage_deps.py: the stage script's imports, transitively, with package __init__
# files and the assets modules read) holds that file, and nothing else. The config schema is
# one module per params section, so this also shows that changing one section's schema
# re-runs only the stages that read it.


def _stage_deps():
    spec = importlib.util.spec_from_file_location("stage_deps", REPO / "scripts" / "stage_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stale(repo) -> set[str]:
    """The stages `dvc status` reports as changed, by base name (``train-per-condition``
    for every ``train-per-condition@...`` of the matrix)."""
    return {name.split(":")[-1].split("@")[0] for name in repo.status()}


def _touch(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original + b"\n# touched by test_pipeline\n")
    return original


@pytest.mark.slow
def test_editing_a_module_reruns_exactly_the_stages_whose_closure_holds_it(tiny_pipeline, tmp_path):
    from dvc.repo import Repo, lock_repo

    work = copy_workspace(tiny_pipeline, tmp_path / "work")
    cwd = os.getcwd()
    os.chdir(work)  # DVC resolves some paths against the working directory
    # One repository held locked: `dvc status` as the command computes it, without parsing
    # dvc.yaml again for each of the hundred edits (half the test's time); dvc.yaml, the
    # lock and params.yaml do not change here, the edited files' hashes are computed anew.
    try:
        with Repo(str(work)) as repo, lock_repo(repo):
            _check_each_edit(work, repo)
    finally:
        os.chdir(cwd)


def _check_each_edit(work: Path, repo) -> None:
    assert _stale(repo) == set(), "the finished pipeline is not up to date"
    deps = _stage_deps()
    closures = {
        name: {str(p) for p in deps.code_deps(script, work)}
        for name, script in deps.stage_scripts(work / "dvc.yaml").items()
    }
    files = sorted(
        p
        for p in (work / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    )
    assert len(files) > 60
    wrong = {}
    for path in files:
        rel = str(path.relative_to(work))
        expected = {
            name
            for name, code in closures.items()
            if any(rel == c or rel.startswith(c + "/") for c in code)
        }
        original = _touch(path)
        try:
            stale = _stale(repo)
        finally:
            path.write_bytes(original)
        if stale != expected:
            wrong[rel] = {"re-run": sorted(stale), "imported by": sorted(expected)}
    assert not wrong, wrong
    assert _stale(repo) == set()


def test_repro_console_shows_progress_and_one_summary_line_per_stage(pipeline):
    """A quiet console: under `dvc repro`, a stage prints its progress bars and one summary
    line (what it made, where it went), nothing else; no Python warning (the project's own
    are errors in this run, the libraries' go to the debug log) and no library log line."""
    console = repro_console(pipeline)
    ran = re.findall(r"^Running stage '([^']+)':$", console["stdout"], flags=re.M)
    assert len(ran) == len(yaml.safe_load((pipeline / "dvc.lock").read_text())["stages"]) == 20
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", console["stderr"]) if ln.strip()]
    bars = [ln for ln in lines if re.search(r"\d+%\|", ln)]
    others = [ln for ln in lines if ln not in bars]
    assert not [ln for ln in others if re.search(r"Warning\b|warnings\.warn", ln)], others
    summaries = [ln for ln in others if " -> " in ln]
    assert others == summaries, [ln for ln in others if ln not in summaries]
    assert len(summaries) == len(ran)
    for name in ("localizer", "generate studies", "predict"):
        assert any(bar.startswith(name) for bar in bars), name
    by_stage = {
        "ingest": r"^9 train and 2 test studies, \d+ label rows",
        "evaluate": r"^out-of-fold rsna score \(lower is better\): resnet50 \d\.\d{3}, ",
        "train-per-condition": r"^spinal/resnet50, folds 0, 1: out-of-fold macro recall 0\.\d{3}",
        "compare-backbones": r"^chosen per group: (\w+ \w+, ){2}\w+ \w+ \(registered @champion\)",
        "predict": r"^2 studies graded, rsna score \d+\.\d{3}, median point error",
    }
    for stage, pattern in by_stage.items():
        assert [s for s in summaries if re.match(pattern, s)], (stage, summaries)
