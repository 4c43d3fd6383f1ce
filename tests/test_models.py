"""The backbone factory and its cost: timm names from params, FLOPs via flop_counter."""

from __future__ import annotations

import errno
import re
import socket

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch

from spinegrade.core.config.params import load_params
from spinegrade.core.errors import ConfigError
from spinegrade.models.backbones import (
    count_flops,
    count_parameters,
    create_backbone,
    model_cost,
    model_flops,
)


def test_flops_of_a_linear_layer_count_a_multiply_add_as_two():
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 10, bias=False))
    assert model_flops(layer, image_size=4, in_chans=2) == pytest.approx(2 * 32 * 10 / 1e9)


def test_count_flops_follows_input_size_and_channels():
    small = count_flops("resnet18", 32, 3)
    big = count_flops("resnet18", 64, 3)
    assert big == pytest.approx(4 * small, rel=0.05)  # convolutions scale with area
    more_slices = count_flops("resnet18", 32, 7)
    stem_extra = 2 * (7 - 3) * 64 * 7 * 7 * 16 * 16 / 1e9  # 7x7 stem, stride 2 -> 16x16
    assert more_slices - small == pytest.approx(stem_extra, rel=1e-6)


@pytest.mark.parametrize("backbone", load_params("params.yaml").train_per_condition.backbones)
def test_default_backbones_work_at_the_configured_crop_size(backbone):
    params = load_params("params.yaml")
    recipe = params.train_per_condition.recipe(backbone)
    size, k = params.crop_rois.size_px, params.crop_rois.slices
    model = create_backbone(backbone, k, size, recipe.model_kwargs)
    out = model(torch.zeros(2, k, size, size))
    assert out.shape == (2, 3)
    assert count_parameters(model) > 1e6
    assert 0 < model_flops(model, size, k) < 5
    # counted on the meta device (no weights, no arithmetic): the same numbers
    assert model_cost(backbone, size, k, recipe.model_kwargs) == (
        pytest.approx(model_flops(model, size, k), rel=1e-12),
        count_parameters(model),
    )


@pytest.mark.parametrize("name", ["densenet121", "tf_efficientnetv2_s", "mobilenetv2_100"])
def test_seed_papers_backbones_work_by_name(name):
    model = create_backbone(name, 3, 48)
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 3)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet5O'"):
        create_backbone("resnet5O", 3, 48)


def _unreachable(*args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable")


def _no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_pretrained_without_network_fails_clearly(monkeypatch):
    # A machine without network, as name lookup and connect() report it there, and the
    # hub in offline mode: the HF_HUB_OFFLINE variable is read once, when huggingface_hub
    # is imported, so setting it here was ignored and the hub retried for 47 s.
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    monkeypatch.setattr(socket.socket, "connect", _unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="pretrained: false"):
        create_backbone("resnet18", 3, 48, pretrained=True)


def test_local_weights_file(tmp_path):
    source = create_backbone("resnet18", 3, 32)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = create_backbone("resnet18", 3, 32, weights=str(tmp_path / "w.pt"))
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="weights file .* not found"):
        create_backbone("resnet18", 3, 32, weights=str(tmp_path / "nope.pt"))


def _no_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_checkpoint_adapted_to_slices_and_three_classes(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    state = timm.create_model("resnet18", num_classes=1000, in_chans=3).state_dict()
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    model = create_backbone("resnet18", in_chans=5, image_size=32, weights=str(path))
    loaded = {k: v.clone() for k, v in model.state_dict().items()}  # before BN stats move
    assert model(torch.zeros(2, 5, 32, 32)).shape == (2, 3)
    expected_stem = timm.models.adapt_input_conv(5, state["conv1.weight"])
    assert loaded["conv1.weight"].shape == (64, 5, 7, 7)
    assert torch.equal(loaded["conv1.weight"], expected_stem)
    assert torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert torch.equal(loaded["bn1.running_var"], state["bn1.running_var"])
    assert loaded["fc.weight"].shape == (3, 512) and loaded["fc.bias"].shape == (3,)
    assert not torch.equal(loaded["fc.weight"], state["fc.weight"][:3])  # fresh head


def test_missing_weights_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "absent" / "w.safetensors"
    with pytest.raises(ConfigError, match=f"not found: {re.escape(str(path))}"):
        create_backbone("resnet18", 3, 32, weights=str(path))


def test_unloadable_weights_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=f"cannot load weights file {re.escape(str(path))}"):
        create_backbone("resnet18", 3, 32, weights=str(path))
