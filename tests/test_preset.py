"""The GPU preset: a named set of params run as one DVC experiment (spinegrade.cli.preset)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spinegrade.cli.preset import _merge, command, main, overrides
from spinegrade.core.config.params import load_params
from spinegrade.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PRESET, PARAMS = REPO / "presets" / "gpu-rsna.yaml", REPO / "params.yaml"


def test_the_gpu_preset_is_valid_and_sets_what_a_gpu_user_needs(tmp_path):
    merged = _merge(yaml.safe_load(PARAMS.read_text()), yaml.safe_load(PRESET.read_text()))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged))
    params = load_params(tmp_path / "params.yaml")
    assert params.engine.device == "cuda" and params.engine.precision == "bf16"
    assert params.data.source == "rsna"
    assert len(params.train_per_condition.training.folds) == params.split_folds.n_folds
    assert params.crop_rois.size_px > load_params(PARAMS).crop_rois.size_px


def test_the_command_sets_every_key_of_the_preset_as_dvc_reads_it():
    cmd = command(PRESET, PARAMS, ["--queue"])
    assert cmd[:5] == ["dvc", "exp", "run", "--name", "gpu-rsna"] and cmd[-1] == "--queue"
    pairs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-S"]
    # dvc exp run -S parses each value as YAML: the round trip must give the preset back
    applied = {}
    for pair in pairs:
        key, text = pair.split("=", 1)
        node = applied
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)
    assert applied == yaml.safe_load(PRESET.read_text())
    assert all(" " not in pair for pair in pairs)
    assert len(pairs) == len(overrides(PRESET, PARAMS))


def test_a_key_params_yaml_lacks_is_refused(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("engine:\n  precison: bf16\n")
    with pytest.raises(ConfigError, match="engine.precison is not a key of"):
        overrides(bad, PARAMS)


def test_a_bad_value_is_refused_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  precision: fp8\n")
    with pytest.raises(ConfigError, match="engine.precision: expected one of"):
        overrides(bad, PARAMS)
    assert main([str(bad), "--params", str(PARAMS), "--print"]) == 1


def test_print_shows_the_command(capsys):
    assert main([str(PRESET), "--params", str(PARAMS), "--print"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run --name gpu-rsna -S ") and "engine.precision=bf16" in out


def test_more_dvc_arguments_go_after_a_double_dash(capsys):
    argv = [str(PRESET), "--params", str(PARAMS), "--print", "--", "-S", "engine.nproc_per_node=4"]
    assert main(argv) == 0
    assert capsys.readouterr().out.rstrip().endswith("-S engine.nproc_per_node=4")
