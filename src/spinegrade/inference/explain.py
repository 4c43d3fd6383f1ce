"""Explanations: Grad-CAM of a grader on one crop, and one PNG per graded level."""

from __future__ import annotations

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


def grad_cam(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM of class ``target`` for one input (1, k, S, S): (S, S) in [0, 1].

    Uses timm's forward_features / forward_head split: the last feature map is weighted by
    its spatially averaged gradient. Channels-last feature maps (``output_fmt`` NHWC, as
    Swin's) are moved to channels-first first.
    """
    model.eval()
    channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
    with torch.no_grad():
        feats = model.forward_features(x)
    if channels_last:
        feats = feats.permute(0, 3, 1, 2)
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(feats.permute(0, 2, 3, 1) if channels_last else feats)
        (grad,) = torch.autograd.grad(logits[0, target], feats)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam, size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    cam = cam[0, 0].detach().cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def explanation_image(image: np.ndarray, cam: np.ndarray, title: str) -> Image.Image:
    """The crop's slice (uint8, S x S) beside it with ``cam`` (S x S in [0, 1]) overlaid in
    the jet colour map, each enlarged ``SCALE`` times, under a one-line ``title``."""
    side = image.shape[0] * SCALE
    gray = Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST).convert("RGB")
    heat = (colormaps["jet"](cam)[..., :3] * 255).astype(np.uint8)
    heat = Image.fromarray(heat).resize((side, side), Image.Resampling.BILINEAR)
    overlay = Image.blend(gray, heat, CAM_ALPHA)
    canvas = Image.new("RGB", (2 * side + GAP_PX, side + TITLE_PX), "white")
    canvas.paste(gray, (0, TITLE_PX))
    canvas.paste(overlay, (side + GAP_PX, TITLE_PX))
    ImageDraw.Draw(canvas).text((4, 3), title, fill="black")
    return canvas


def write_explanations(
    out_dir: str | Path,
    graded: pd.DataFrame,
    crops: np.ndarray,
    points: pd.DataFrame,
    graders: dict[str, Grader],
) -> list[Path]:
    """One PNG per graded row: the crop's centre slice, and the same with its Grad-CAM.

    Drawn with Pillow, not a matplotlib figure per row: 500 figures took a minute of the
    predict stage.
    """
    written = []
    points = points.reset_index(drop=True)
    for i, row in graded.iterrows():
        condition = points.loc[i, "condition"]
        grader = graders.get(vocab.GROUP_OF_CONDITION[condition])
        if grader is None:
            continue
        member = grader.members[0]  # an ensemble is explained by its first backbone
        ds = CropDataset(crops[i : i + 1], np.zeros(1, dtype=np.int64), member.mean, member.std)
        x = ds[0][0][None].to(next(member.model.parameters()).device)
        proba = row[list(vocab.SEVERITY_COLUMNS)].to_numpy(dtype=float)
        target = int(np.argmax(proba))
        cam = grad_cam(member.model, x, target)
        title = (
            f"{row['row_id']}: {vocab.SEVERITIES[target]} p={proba[target]:.2f} ({member.backbone})"
        )
        picture = explanation_image(crops[i, crops.shape[1] // 2], cam, title)
        path = Path(out_dir) / str(points.loc[i, "study_id"]) / f"{row['row_id']}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        written.append(path)
    return written
