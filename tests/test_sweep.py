"""make sweep (spinegrade.cli.sweep) before anything runs: the grid DVC would expand, each
point checked against params.yaml, the experiments' names, and the commands it would run.
The queued sweep itself runs in tests/test_pipeline.py."""

from __future__ import annotations

import shutil

import pytest
from helpers import REPO

from spinegrade.cli import sweep
from spinegrade.core.errors import ConfigError

LR = "train-per-condition.recipes.convnext_tiny.lr"


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def test_the_grid_is_every_combination_with_values_parsed_as_dvc_does(params):
    points = sweep.grid([f"{LR}=1e-4,3e-4", "train-per-condition.training.loss=ce,focal"], params)
    assert points == [
        {LR: 0.0001, "train-per-condition.training.loss": "ce"},
        {LR: 0.0001, "train-per-condition.training.loss": "focal"},
        {LR: 0.0003, "train-per-condition.training.loss": "ce"},
        {LR: 0.0003, "train-per-condition.training.loss": "focal"},
    ]
    assert sweep.grid(["split-folds.seed=range(1,4)"], params) == [
        {"split-folds.seed": s} for s in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "train-per-condition.recipes.convnext.lr=1e-4,1e-3",
            r"recipes\.convnext\.lr is not a key",
        ),
        (f"{LR}=-1,1e-3", r"lr: Input should be greater than 0"),
        ("train-per-condition.training.loss=ce,hinge", r"training\.loss"),
        ("no-equals-sign", r"expected key=value"),
        (f"{LR}=range(1,", r"-S "),
    ],
)
def test_a_bad_point_is_refused_before_anything_is_queued(params, given, message):
    with pytest.raises(ConfigError, match=message):
        sweep.grid([given], params)


def test_each_experiment_is_named_after_what_it_sets(params):
    points = sweep.grid([f"{LR}=1e-4,1e-3", "evaluate.bootstrap_seed=0"], params)
    cmds = sweep.queue_commands(points, "convnext")
    assert [c[c.index("-n") + 1] for c in cmds] == ["convnext-lr-0.0001", "convnext-lr-0.001"]
    assert cmds[0][:4] == ["dvc", "exp", "run", "--queue"]
    assert cmds[0][-4:] == ["-S", f"{LR}=0.0001", "-S", "evaluate.bootstrap_seed=0"]
    # without a prefix, the name is what it sets; a value that is no git ref name is cleaned
    (named,) = sweep.queue_commands([{"train-per-condition.training.folds": [0, 1]}], "")
    assert named[named.index("-n") + 1] == "folds-_0_1"
    assert named[-1] == "train-per-condition.training.folds=[0, 1]"


def test_print_shows_the_commands_and_outside_git_it_refuses(params, tmp_path, capsys, monkeypatch):
    assert sweep.main(["-S", f"{LR}=1e-4,1e-3", "--params", str(params), "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "dvc exp run --run-all --jobs 1",
        "dvc exp show --only-changed --no-pager --drop '.*/.*|^models$|^localizers$' --md",
    ]
    assert lines[0] == f"dvc exp run --queue -n lr-0.0001 -S {LR}=0.0001"
    monkeypatch.chdir(tmp_path)  # not a git repository
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert sweep.main(["-S", f"{LR}=1e-4", "--params", str(params)]) == 1
    assert "git repository" in capsys.readouterr().err
