"""Explanations: Grad-CAM of a grader on one crop, and one PNG per graded level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import nn

from spinegrade.core import vocab
from spinegrade.core.io import atomic_path
from spinegrade.inference.grading import Grader
from spinegrade.models.inputs import CropDataset

SCALE = 5  # PNG pixels per crop pixel
CAM_ALPHA = 0.4  # weight of the Grad-CAM colours over the slice
GAP_PX = 6
TITLE_PX = 16


MIN_CAM_SIDE = 4  # Grad-CAM reads the deepest feature map at least this many pixels a side


def cam_layer(model: nn.Module, size: int) -> tuple[str, int]:
    """The timm feature stage Grad-CAM reads for ``size``-pixel inputs: the deepest whose
    map is at least ``MIN_CAM_SIDE`` pixels a side (the last one is 1-2 px for 48 px crops,
    which would make every map flat), as (module name, channels)."""
    info = list(model.feature_info)
    fits = [f for f in info if size // int(f["reduction"]) >= MIN_CAM_SIDE]
    chosen = fits[-1] if fits else info[0]
    return chosen["module"], int(chosen["num_chs"])


def grad_cam(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM of class ``target`` for one input (1, k, S, S): (S, S) in [0, 1].

    The feature map of ``cam_layer`` (timm's feature_info, so any timm backbone) is weighted
    by its spatially averaged gradient. Channels-last maps (Swin's stages) are moved to
    channels-first first. No parameter gradient is left behind.
    """
    model.eval()
    name, channels = cam_layer(model, x.shape[-1])
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits[0, target], captured[0])
    finally:
        handle.remove()
    feats = captured[0].detach()
    if feats.shape[1] != channels and feats.shape[-1] == channels:
        feats, grad = feats.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    cam = cam[0, 0].cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def cam_overlay(image: np.ndarray, cam: np.ndarray, scale: int = 1) -> Image.Image:
    """``image`` (uint8, S x S) with ``cam`` (S x S in [0, 1]) blended over it in the jet
    colour map, enlarged ``scale`` times."""
    side = image.shape[0] * scale
    gray = Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST).convert("RGB")
    heat = (colormaps["jet"](cam)[..., :3] * 255).astype(np.uint8)
    heat = Image.fromarray(heat).resize((side, side), Image.Resampling.BILINEAR)
    return Image.blend(gray, heat, CAM_ALPHA)


def explanation_image(image: np.ndarray, cam: np.ndarray, title: str) -> Image.Image:
    """The crop's slice (uint8, S x S) beside it with ``cam`` (S x S in [0, 1]) overlaid in
    the jet colour map, each enlarged ``SCALE`` times, under a one-line ``title``."""
    side = image.shape[0] * SCALE
    gray = Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST).convert("RGB")
    overlay = cam_overlay(image, cam, SCALE)
    canvas = Image.new("RGB", (2 * side + GAP_PX, side + TITLE_PX), "white")
    canvas.paste(gray, (0, TITLE_PX))
    canvas.paste(overlay, (side + GAP_PX, TITLE_PX))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    return canvas


@dataclass
class Explanation:
    """What a grader saw for one graded row: its crop's centre slice and the Grad-CAM of
    the predicted grade."""

    study_id: int
    row_id: str
    image: np.ndarray  # (S, S) uint8
    cam: np.ndarray  # (S, S) in [0, 1]
    title: str


def explain_rows(
    graded: pd.DataFrame, crops: np.ndarray, points: pd.DataFrame, graders: dict[str, Grader]
) -> list[Explanation]:
    """An Explanation per graded row (``graded``, ``crops`` and ``points`` row-aligned, as
    grade_points returns them). An ensemble is explained by its first backbone."""
    out = []
    points = points.reset_index(drop=True)
    inputs: dict[str, CropDataset] = {}  # group -> every crop as its first member sees it
    for i, row in graded.reset_index(drop=True).iterrows():
        group = vocab.GROUP_OF_CONDITION[points.loc[i, "condition"]]
        grader = graders.get(group)
        if grader is None:
            continue
        member = grader.members[0]
        if group not in inputs:
            labels = np.zeros(len(crops), dtype=np.int64)
            inputs[group] = CropDataset(crops, labels, member.mean, member.std)
        x = inputs[group][i][0][None].to(next(member.model.parameters()).device)
        proba = row[list(vocab.SEVERITY_COLUMNS)].to_numpy(dtype=float)
        target = int(np.argmax(proba))
        title = (
            f"{row['row_id']}: {vocab.SEVERITIES[target]} p={proba[target]:.2f} ({member.backbone})"
        )
        out.append(
            Explanation(
                int(points.loc[i, "study_id"]),
                str(row["row_id"]),
                crops[i, crops.shape[1] // 2],
                grad_cam(member.model, x, target),
                title,
            )
        )
    return out


def write_explanations(out_dir: str | Path, explanations: list[Explanation]) -> list[Path]:
    """One PNG per explained row, {out_dir}/{study}/{row_id}.png: the crop's centre slice,
    and the same with its Grad-CAM.

    Drawn with Pillow, not a matplotlib figure per row: 500 figures took a minute of the
    predict stage.
    """
    written = []
    for e in explanations:
        path = Path(out_dir) / str(e.study_id) / f"{e.row_id}.png"
        with atomic_path(path) as tmp:
            explanation_image(e.image, e.cam, e.title).save(tmp, format="PNG")
        written.append(path)
    return written
