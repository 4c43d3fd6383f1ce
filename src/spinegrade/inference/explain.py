"""Explanations: Grad-CAM of a grader on one crop, and one PNG per graded level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from spinegrade.core import vocab
from spinegrade.inference.grading import Grader
from spinegrade.models.inputs import CropDataset


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


def write_explanations(
    out_dir: str | Path,
    graded: pd.DataFrame,
    crops: np.ndarray,
    points: pd.DataFrame,
    graders: dict[str, Grader],
) -> list[Path]:
    """One PNG per graded row: the crop's centre slice with its Grad-CAM overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spinegrade.core.io import atomic_path

    written = []
    points = points.reset_index(drop=True)
    for i, row in graded.iterrows():
        condition = points.loc[i, "condition"]
        grader = graders.get(vocab.GROUP_OF_CONDITION[condition])
        if grader is None:
            continue
        ds = CropDataset(crops[i : i + 1], np.zeros(1, dtype=np.int64), grader.mean, grader.std)
        x = ds[0][0][None].to(next(grader.models[0].parameters()).device)
        proba = row[list(vocab.SEVERITY_COLUMNS)].to_numpy(dtype=float)
        target = int(np.argmax(proba))
        cam = grad_cam(grader.models[0], x, target)
        image = crops[i, crops.shape[1] // 2]
        fig, (left, right) = plt.subplots(1, 2, figsize=(5.2, 2.9))
        for ax in (left, right):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.axis("off")
        right.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
        left.set_title("crop (centre slice)", fontsize=7)
        right.set_title("Grad-CAM", fontsize=7)
        fig.suptitle(
            f"{row['row_id']}: "
            f"{vocab.SEVERITIES[target]} p={proba[target]:.2f} ({grader.backbone})",
            fontsize=7,
        )
        fig.tight_layout()
        path = Path(out_dir) / str(points.loc[i, "study_id"]) / f"{row['row_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        written.append(path)
    return written
