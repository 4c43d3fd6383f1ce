"""The one backbone factory (timm's registry), the model's input normalization, its cost in
FLOPs and parameters, and its probabilities over a crop dataset (``predict_proba``).

A backbone is a timm model name plus keyword arguments from params; slices go in as
channels (``in_chans``) and the head predicts the three severities. No branch here knows
any particular architecture: per-backbone differences live in params (``recipes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spinegrade.core.errors import ConfigError
from spinegrade.core.runtime import Runtime, device
from spinegrade.models.inputs import CropDataset

N_CLASSES = 3


def create_backbone(
    name: str,
    in_chans: int,
    image_size: int,
    model_kwargs: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    weights: str | None = None,
) -> torch.nn.Module:
    """A timm classifier with ``in_chans`` input channels and 3 outputs.

    Args:
        name: timm model name, e.g. ``resnet50``, ``convnext_tiny``.
        in_chans: number of slices fed as channels.
        image_size: crop side in pixels; passed as ``img_size`` to models that take it
            (vision transformers fix their patch grid at construction).
        model_kwargs: extra timm arguments (e.g. ``window_size``, ``ls_init_value``).
        pretrained: load timm's pretrained weights (needs network access).
        weights: a local checkpoint (a state dict, ``.safetensors`` or ``torch.save``) to
            load instead, through timm's pretrained loader: its stem is adapted to
            ``in_chans`` and its classifier dropped unless it already has 3 outputs.

    Raises:
        ConfigError: unknown model name, pretrained weights that cannot be had, or a
            weights file that is missing or cannot be loaded into the model.
    """
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm backbone {name!r} (see timm.list_models())")
    kwargs = dict(model_kwargs or {})
    if _takes_img_size(name):
        kwargs.setdefault("img_size", image_size)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"weights file for {name!r} not found: {path}")
        try:
            return timm.create_model(
                name,
                pretrained=True,
                pretrained_cfg_overlay=_weights_overlay(name, path),
                num_classes=N_CLASSES,
                in_chans=in_chans,
                **kwargs,
            )
        except Exception as exc:  # torch, safetensors and timm raise many types
            raise ConfigError(
                f"cannot load weights file {path} into {name!r} ({type(exc).__name__}: {exc})"
            ) from exc
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=N_CLASSES, in_chans=in_chans, **kwargs
        )
    except (OSError, RuntimeError) as exc:  # hub download failures surface as these
        if pretrained:
            raise ConfigError(
                f"cannot load pretrained weights for {name!r} ({exc}); this machine may have "
                "no network access: set pretrained: false, or give a local weights file"
            ) from exc
        raise
    return model


def _weights_overlay(name: str, path: Path) -> dict[str, Any]:
    """timm pretrained-cfg overlay with the state dict of the local file ``path`` (timm
    then adapts its stem and head as for downloaded weights), never the network.

    timm drops the checkpoint's classifier when the model's class count differs from the
    cfg's ``num_classes`` (1000 for ImageNet weights); declaring the checkpoint's own head
    size keeps a head that matches (e.g. a 3-class checkpoint of this project).
    """
    state = timm.models.load_state_dict(str(path))  # the reader timm uses for ``file``
    overlay: dict[str, Any] = {"state_dict": state}  # read once: timm takes it as it is
    cfg = timm.get_pretrained_cfg(name)
    heads = cfg.classifier if cfg else None
    for head in (heads,) if isinstance(heads, str) else heads or ():
        if f"{head}.weight" in state:
            overlay["num_classes"] = int(state[f"{head}.weight"].shape[0])
            break
    return overlay


def _takes_img_size(name: str) -> bool:
    """True for models whose constructor fixes the input size (vision transformers)."""
    cfg = timm.get_pretrained_cfg(name)
    return bool(cfg and cfg.fixed_input_size)


def input_normalization(model: torch.nn.Module) -> tuple[float, float]:
    """Scalar (mean, std) for grey slices in [0, 1], from the model's own data config."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return float(np.mean(cfg["mean"])), float(np.mean(cfg["std"]))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_flops(model: torch.nn.Module, image_size: int, in_chans: int) -> float:
    """GFLOPs of one forward pass of one image; a multiply-add counts as 2 FLOPs."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def model_cost(
    name: str, image_size: int, in_chans: int, model_kwargs: Mapping[str, Any] | None = None
) -> tuple[float, int]:
    """(GFLOPs, parameters) of backbone ``name`` on one (in_chans, size, size) input; a
    multiply-add counts as 2 FLOPs.

    Counted with torch.utils.flop_counter at the real input size and channel count, on
    the meta device: shapes only, no weights initialized and no arithmetic done, so it
    costs a fraction of a second where a real forward pass took seconds.
    """
    with torch.device("meta"):
        model = create_backbone(name, in_chans, image_size, model_kwargs)
    return model_flops(model, image_size, in_chans), count_parameters(model)


def count_flops(
    name: str, image_size: int, in_chans: int, model_kwargs: Mapping[str, Any] | None = None
) -> float:
    """GFLOPs (multiply-add = 2 FLOPs) of backbone ``name`` (see :func:`model_cost`)."""
    return model_cost(name, image_size, in_chans, model_kwargs)[0]


@torch.no_grad()
def predict_proba(
    model: nn.Module, dataset: CropDataset, batch_size: int, rt: Runtime | None = None
) -> np.ndarray:
    """Softmax probabilities (N, 3) float64 of ``dataset`` in order, the model (already on
    ``rt``'s device) run under ``rt``'s autocast; ``rt`` default: the CPU in fp32. Its
    precision is checked by whoever built it (runtime.check_precision)."""
    rt = rt or Runtime(device("cpu"))
    model.eval()
    out = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, _ in loader:
        with rt.autocast():
            logits = model(rt.to_device(x))
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros((0, 3))
