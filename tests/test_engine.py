"""The training engine: precision, workers, sampler, preflight errors, failures, torchrun.

Everything here runs on the CPU (bf16 and fp16 autocast, gloo for two processes); the tests
that need CUDA carry the ``gpu`` marker and run in addition where a GPU is visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from spinegrade.core import runtime
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.params import load_params
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_localizer import localizer_engine
from spinegrade.core.config.train_per_condition import TrainingConfig, TrainPerConditionConfig
from spinegrade.core.errors import ConfigError, TrainingError
from spinegrade.core.runtime import Runtime, make_runtime
from spinegrade.tracking import store as tracking
from spinegrade.tracking.hooks import MlflowFoldHooks
from spinegrade.training.engine.loader import SeededSampler, sample_seed
from spinegrade.training.engine.loop import LoopSettings, fit
from spinegrade.training.graders import fit as grader_fit
from spinegrade.training.graders.fit import Split, train_fold, train_group_backbone

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def toy(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size) uint8 crops whose central brightness encodes the class.

    At least 32 px: at 16 px ResNet's last stage works on 1 x 1 maps, where oneDNN's CPU
    bf16 convolution backward now and then returns NaN gradients (seen with torch 2.14).
    """
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    crops = rng.integers(0, 60, size=(n, 3, size, size)).astype(np.uint8)
    c = size // 2
    for i, y in enumerate(labels):
        crops[i, :, c - 4 : c + 4, c - 4 : c + 4] += np.uint8(60 * (y + 1))
    return crops, labels


def fold(rt: Runtime, epochs: int = 1, seed: int = 3, lr: float = 1e-3, **cfg):
    train, val = Split(*toy(96, 0)), Split(*toy(48, 1))
    settings = TrainingConfig(epochs=epochs, batch_size=16, patience=epochs, **cfg)
    return train_fold("resnet18", Recipe(lr=lr), settings, train, val, seed=seed, rt=rt)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- precision


@pytest.mark.skipif(
    not runtime.has_bf16(CPU),
    reason=f"this CPU ({runtime.cpu_name()}) has no AVX-512 bf16 or AMX: bf16 autocast "
    "is rejected there (test_bf16_on_a_cpu_without_it_is_a_clear_error)",
)
def test_bf16_autocast_on_cpu_is_finite_and_learns():
    runtime.check_precision(CPU, "bf16")  # AVX-512 bf16 or AMX
    _, res = fold(Runtime(CPU, precision="bf16"), epochs=4, lr=3e-3)
    losses = [row["train_loss"] for row in res.history]
    assert np.isfinite(losses).all() and np.isfinite(res.oof).all()
    assert losses[-1] < losses[0]
    val_labels = toy(48, 1)[1]
    accuracy = float((res.oof.argmax(axis=1) == val_labels).mean())
    prior = np.bincount(val_labels).max() / len(val_labels)
    assert accuracy > prior + 0.15, (accuracy, prior)


class LinearTask:
    """A linear classifier on flattened toy crops: the loop with a model small enough for
    fp16's slow CPU kernels."""

    def __init__(self, labels):
        self.labels = labels

    def loss(self, model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]).float(), batch[1])

    def predict(self, model, batch):
        return {"proba": torch.softmax(model(batch[0]).float(), 1).double().cpu().numpy()}

    def score(self, outputs):
        p = outputs["proba"][np.arange(len(self.labels)), self.labels]
        return {"val_loss": float(-np.log(p).mean())}


def flat_dataset(x, y):
    """Toy crops flattened for LinearTask's model."""
    flat = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255)
    return torch.utils.data.TensorDataset(flat, torch.from_numpy(y))


def test_fp16_trains_through_the_gradient_scaler(monkeypatch):
    (train_x, train_y), (val_x, val_y) = toy(96, 0), toy(48, 1)
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(
        torch.amp.GradScaler,
        "step",
        lambda self, opt: steps.append(self.is_enabled()) or real_step(self, opt),
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, 3)
    settings = LoopSettings(epochs=6, patience=6, batch_size=16, seed=0)
    res = fit(
        model,
        SeedlessDataset(flat_dataset(train_x, train_y)),
        flat_dataset(val_x, val_y),
        LinearTask(val_y),
        Recipe(lr=3e-3),
        settings,
        Runtime(CPU, precision="fp16"),
    )
    losses = [row["train_loss"] for row in res.history]
    assert steps and all(steps)  # every step went through the enabled scaler
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]


class SeedlessDataset(torch.utils.data.Dataset):
    """A dataset without augmentation: takes the sampler's (index, seed) keys."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, key):
        return self.inner[key[0]]


class ScriptedTask(LinearTask):
    """LinearTask whose val_loss and further losses (for ``choose``) are given per epoch."""

    def __init__(self, labels, val_losses, more_losses):
        super().__init__(labels)
        self.val_losses, self.more_losses = iter(val_losses), iter(more_losses)

    def score(self, outputs):
        return {"val_loss": next(self.val_losses)}

    def more(self, outputs):
        return next(self.more_losses)


def test_the_loop_chooses_the_first_lowest_epoch_per_loss_and_stops_on_val_loss():
    (train_x, train_y), (val_x, val_y) = toy(32, 0), toy(16, 1)
    task = ScriptedTask(
        val_y,
        [1.0, 0.5, 0.5, 0.7, 0.1],  # epoch 3 ties epoch 2: no better, then patience runs out
        [{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.5}, {"a": 0.9, "b": 0.5}],
    )
    weights = []
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, 3)
    res = fit(
        model,
        SeedlessDataset(flat_dataset(train_x, train_y)),
        flat_dataset(val_x, val_y),
        task,
        Recipe(lr=3e-3),
        LoopSettings(epochs=5, patience=2, batch_size=16, seed=0),
        Runtime(CPU),
        on_epoch=lambda epoch, row: weights.append(model.weight.detach().clone()),
        choose=task.more,
    )
    assert [row["epoch"] for row in res.history] == [1, 2, 3, 4]  # epoch 4: 2 since best
    assert res.best_epoch == 2 and torch.equal(res.state["weight"], weights[1])
    assert torch.equal(model.weight, weights[1])  # the best weights loaded
    assert {k: (c.epoch, c.loss) for k, c in res.chosen.items()} == {"a": (4, 0.9), "b": (3, 0.5)}
    for choice in res.chosen.values():
        assert torch.equal(choice.state["weight"], weights[choice.epoch - 1])
        assert choice.outputs["proba"].shape == (16, 3)


def test_fp16_on_cpu_is_refused_as_too_slow():
    with pytest.raises(ConfigError, match="fp16 is for CUDA GPUs"):
        runtime.check(EngineConfig(device="cpu", precision="fp16"))


def test_fp16_uses_a_gradient_scaler_and_bf16_does_not():
    assert Runtime(CPU, precision="fp16").grad_scaler().is_enabled()
    assert not Runtime(CPU, precision="bf16").grad_scaler().is_enabled()
    assert not Runtime(CPU).grad_scaler().is_enabled()
    x = torch.ones(2, 2)
    with Runtime(CPU, precision="bf16").autocast():
        assert (x @ x).dtype == torch.bfloat16
    with Runtime(CPU).autocast():
        assert (x @ x).dtype == torch.float32


# --------------------------------------------------------------------------- determinism


def test_cpu_runs_are_byte_identical_whatever_the_worker_count():
    """Per-sample augmentation seeds: loading in 0 or 2 worker processes changes nothing.
    (One torch thread: workers beside an OpenMP pool that fills every core slow it 20x.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, a = fold(Runtime(CPU, workers=0), epochs=2)
        _, b = fold(Runtime(CPU, workers=2), epochs=2)
        _, c = fold(Runtime(CPU, workers=0), epochs=2, seed=4)
    finally:
        torch.set_num_threads(before)
    assert same_weights(a.state_dict, b.state_dict)
    np.testing.assert_array_equal(a.oof, b.oof)
    assert not same_weights(a.state_dict, c.state_dict)


def test_the_sampler_shards_an_epoch_and_seeds_each_sample_by_index():
    n = 11
    ranks = [SeededSampler(n, seed=5, rank=r, world=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 6  # padded to equal shards
    assert {i for shard in shards for i, _ in shard} == set(range(n))
    for shard in shards:
        for i, seed in shard:
            assert seed == sample_seed(5, 3, i)  # the same wherever it is loaded
    single = SeededSampler(n, seed=5)
    single.set_epoch(1)
    first = [i for i, _ in single]
    single.set_epoch(2)
    assert sorted(first) == list(range(n)) and first != [i for i, _ in single]
    assert sample_seed(5, 1, 0) != sample_seed(5, 2, 0)


# --------------------------------------------------------------------------- settings


def test_cuda_where_none_is_visible_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="engine.device is cuda but no CUDA GPU is visible"):
        runtime.check(EngineConfig(device="cuda"))
    assert runtime.check(EngineConfig(device="auto")) == CPU


def test_bf16_on_a_cpu_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_supports", lambda dtype: False)
    with pytest.raises(ConfigError, match="engine.precision bf16: this CPU .* use fp32"):
        runtime.check(EngineConfig(device="cpu", precision="bf16"))


def test_auto_precision_is_bf16_where_the_device_has_it_and_fp32_elsewhere(monkeypatch):
    cfg = EngineConfig(device="cpu")  # precision auto, the default
    assert cfg.precision == "auto"
    monkeypatch.setattr(runtime, "_cpu_supports", lambda dtype: True)
    assert make_runtime(cfg).precision == "bf16"
    monkeypatch.setattr(runtime, "_cpu_supports", lambda dtype: False)
    assert make_runtime(cfg).precision == "fp32"  # never an error, unlike precision: bf16
    assert runtime.resolve_precision(CPU, "fp16") == "fp16"  # explicit settings stay


def test_the_localizers_own_precision_overrides_the_engines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("engine:\n  precision: bf16\n  threads: 3\n")
    params = load_params(path)
    # unset: the engine's
    assert localizer_engine(params.train_localizer, params.engine) == params.engine
    path.write_text(
        "engine:\n  precision: bf16\n  threads: 3\ntrain-localizer:\n  precision: fp32\n"
    )
    params = load_params(path)
    assert localizer_engine(params.train_localizer, params.engine).precision == "fp32"
    assert localizer_engine(params.train_localizer, params.engine).threads == 3
    assert params.engine.precision == "bf16"


def test_more_processes_than_devices_is_a_clear_error(monkeypatch):
    cores = os.cpu_count()
    with pytest.raises(ConfigError, match=f"nproc_per_node is {cores + 1} but .* {cores} CPU"):
        runtime.check(EngineConfig(device="cpu", nproc_per_node=cores + 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="nproc_per_node is 2 but only 1 CUDA GPU"):
        runtime.check_processes(torch.device("cuda", 0), 2)


def test_engine_params_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("engine:\n  precision: fp8\n")
    with pytest.raises(ConfigError, match=r"engine.precision: expected one of \['auto', 'fp32'"):
        load_params(path)
    path.write_text("engine:\n  workers: many\n")
    with pytest.raises(ConfigError, match="engine.workers"):
        load_params(path)
    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        EngineConfig(nproc_per_node=0)
    assert make_runtime(EngineConfig(device="cpu")).workers == 0  # auto on CPU


# --------------------------------------------------------------------------- failures


def test_a_nan_loss_stops_the_fold_with_a_clear_error(monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, logits, y):
            return logits.sum() * float("nan")

    def nan_loss(cfg):
        return NanLoss()

    monkeypatch.setattr(grader_fit, "make_loss", nan_loss)
    with pytest.raises(TrainingError, match=r"training loss is nan at epoch 1, step 1: lower"):
        fold(Runtime(CPU))


def test_a_nan_gradient_under_a_finite_loss_is_named(monkeypatch):
    def nan_gradients(self, model, batch):
        logits = model(batch[0])
        logits.register_hook(lambda g: g * float("nan"))
        return self.criterion(logits, batch[1])

    monkeypatch.setattr(grader_fit.GraderTask, "loss", nan_gradients)
    with pytest.raises(TrainingError, match=r"gradient of conv1.weight is not finite at epoch 1"):
        fold(Runtime(CPU, precision="bf16"))


def test_cuda_out_of_memory_names_what_to_lower(monkeypatch):
    def oom(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(grader_fit.GraderTask, "loss", oom)
    with pytest.raises(TrainingError, match=r"batch size 16: lower .*batch_size or crop-rois"):
        fold(Runtime(CPU))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store for this test; (client, experiment id)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    experiment = tracking.setup("engine-test")
    yield MlflowClient(), experiment
    while mlflow.active_run():
        mlflow.end_run()


def test_a_crashed_fold_leaves_its_run_failed_with_the_error(store, monkeypatch):
    client, experiment = store
    parent = tracking.parent_run(experiment, "k", "pipeline-k")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full while reading crops")

    monkeypatch.setattr(grader_fit, "train_fold", crash)
    crops, labels = toy(40, 0)
    index = pd.DataFrame({"study_id": np.arange(40) // 5, "label": labels})
    for col in ("condition", "level", "side"):
        index[col] = ""
    folds = pd.DataFrame({"study_id": np.arange(8), "fold": np.arange(8) % 3})
    cfg = TrainPerConditionConfig(
        training=TrainingConfig(folds=(0,)), recipes={"resnet18": Recipe()}
    )
    hooks = MlflowFoldHooks(experiment, parent, "spinal", "resnet18", {}, {}, False, (2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="disk full"):
        train_group_backbone(crops, index, folds, "spinal", "resnet18", cfg, hooks)
    (run,) = client.search_runs([experiment], "tags.fold = '0'")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk full while reading crops"
    assert mlflow.active_run() is None


def test_a_crashed_child_run_is_failed_with_the_error(store, tmp_path):
    client, experiment = store
    (tmp_path / "params.yaml").write_text("{}\n")
    with (
        pytest.raises(TrainingError),
        tracking.child_run("engine-test", "params.yaml", [], "localizer-x", "localizer"),
    ):
        raise TrainingError("localizer x: the training loss is nan at epoch 2, step 1")
    (run,) = client.search_runs([experiment], "tags.`spinegrade.role` = 'localizer'")
    assert run.info.status == "FAILED"
    assert "loss is nan at epoch 2" in run.data.tags["error"]


# --------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def stage_ws(tmp_path_factory, tiny_crops) -> Path:
    """One group's crops and folds, and params for a one-epoch resnet18 on two folds."""
    ws = tmp_path_factory.mktemp("engine-ws")
    crops = tiny_crops[0]["spinal"]
    (ws / "data" / "crops").mkdir(parents=True)
    np.save(ws / "data" / "crops" / "spinal.npy", crops.crops)
    crops.index.to_csv(ws / "data" / "crops" / "spinal.csv", index=False)
    studies = sorted(crops.index["study_id"].unique())
    folds = pd.DataFrame({"study_id": studies, "fold": np.arange(len(studies)) % 3})
    folds.to_csv(ws / "data" / "folds.csv", index=False)
    return ws


def run_train_stage(ws: Path, name: str, **engine) -> tuple[subprocess.CompletedProcess, Path]:
    """train_per_condition.py in ``ws`` with ``engine`` params, into its own MLflow store."""
    params = {
        "train-per-condition": {
            "groups": ["spinal"],
            "backbones": ["resnet18"],
            "training": {"folds": [0, 1], "epochs": 1, "batch_size": 8, "log_model": False},
            "recipes": {"resnet18": {"lr": 0.001}},
        },
        "engine": {
            "device": "cpu",
            "precision": "fp32",
            "threads": 2,
            "system_metrics_s": 0.1,
            **engine,
        },
        "mlflow": {"experiment": "engine"},
    }
    (ws / f"{name}.yaml").write_text(yaml.safe_dump(params))
    db = ws / f"{name}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CUDA_"))}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(REPO / "stages" / "train_per_condition.py")]
    cmd += ["--params", f"{name}.yaml", "--group", "spinal", "--backbone", "resnet18"]
    cmd += ["--out", f"out-{name}"]
    done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    return done, db


@pytest.fixture(scope="module")
def one_and_two(stage_ws):
    one = run_train_stage(stage_ws, "one")
    two = run_train_stage(stage_ws, "two", nproc_per_node=2)
    for done, _ in (one, two):
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return stage_ws


@pytest.mark.slow
def test_two_processes_under_torchrun_write_what_one_process_writes(one_and_two):
    ws = one_and_two
    one, two = ws / "out-one", ws / "out-two"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    oof1, oof2 = pd.read_csv(one / "oof.csv"), pd.read_csv(two / "oof.csv")
    assert oof1.shape == oof2.shape and list(oof1.columns) == list(oof2.columns)
    key = ["study_id", "condition", "level", "side", "label", "fold"]
    pd.testing.assert_frame_equal(oof1[key], oof2[key])  # every crop once, in order
    assert np.allclose(oof2[["normal_mild", "moderate", "severe"]].sum(axis=1), 1.0)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1.keys() == m2.keys() and m1["folds"].keys() == m2["folds"].keys()
    assert m1["folds"]["fold0"]["n_val"] == m2["folds"]["fold0"]["n_val"]
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert list(h1.columns) == list(h2.columns) and len(h1) == len(h2)


@pytest.mark.slow
def test_two_processes_log_exactly_one_set_of_runs(one_and_two):
    for name, world in (("one", "1"), ("two", "2")):
        client = MlflowClient(f"sqlite:///{one_and_two / name}.db")
        (experiment,) = [e for e in client.search_experiments() if e.name == "engine"]
        runs = client.search_runs([experiment.experiment_id])
        train = [r for r in runs if r.data.tags.get("spinegrade.role") == "train"]
        parents = [r for r in runs if r.data.tags.get("spinegrade.role") == "parent"]
        assert sorted(r.info.run_name for r in train) == [
            "spinal-resnet18-fold0",
            "spinal-resnet18-fold1",
        ]
        assert len(parents) == 1 and len(runs) == 3
        for run in train:
            assert run.info.status == "FINISHED"
            tags, metrics = run.data.tags, run.data.metrics
            assert tags["engine.processes"] == world and tags["engine.device"] == "cpu"
            assert tags["engine.precision"] == "fp32" and tags["engine.torch"]
            assert metrics["final_train_images_per_s"] > 0
            assert metrics["final_peak_memory_mb"] > 0
            assert "system/cpu_utilization_percentage" in metrics
            history = client.get_metric_history(run.info.run_id, "train_images_per_s")
            assert len(history) == 1  # one epoch


@pytest.mark.slow
def test_a_bad_engine_setting_fails_before_any_work(stage_ws):
    done, db = run_train_stage(stage_ws, "bad", device="cuda")
    assert done.returncode == 1
    assert "engine.device is cuda but no CUDA GPU is visible" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (stage_ws / "out-bad").exists() and not db.exists()


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_in_each_precision(precision):
    cfg = EngineConfig(device="cuda", precision=precision)
    try:
        rt = make_runtime(cfg)
    except ConfigError as exc:  # bf16 on a pre-Ampere GPU: the clear error is the result
        assert precision == "bf16" and "no bf16 support" in str(exc)
        return
    model, res = fold(rt, epochs=2)
    assert next(model.parameters()).device.type == "cuda"
    assert np.isfinite([r["train_loss"] for r in res.history]).all()
    assert res.speed["peak_memory_mb"] > 0
