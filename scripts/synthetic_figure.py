"""The pictures of the synthetic data in docs/synthetic-data.md: one study, crops by grade.

1. ``--out`` (docs/synthetic-study.png): one study, rendered through the generator's own
   code path (``generate_study``) into a temporary directory and read back from its DICOM
   files: the Sagittal T2/STIR slice of the spinal labels, the Sagittal T1 slice of the
   left foraminal labels and the Axial T2 slice of the L4/L5 subarticular labels, each
   labelled point marked with its grade.
2. ``--crops-out`` (docs/synthetic-crops.png), when crop-rois' output exists (``--crops``,
   default data/crops, i.e. after ``dvc repro``): per condition group, a row of crops for
   each grade (the centre slice of the 2.5D crops the graders train on, ``--per-grade`` of
   them, drawn with a fixed seed), as the models see them.

Usage: python scripts/synthetic_figure.py [--index 3] [--difficulty 1.0]
       [--out docs/synthetic-study.png] [--crops data/crops] [--crops-out docs/synthetic-crops.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from spinegrade.core import vocab  # noqa: E402
from spinegrade.core.config.synthesize import SyntheticConfig  # noqa: E402
from spinegrade.data.dicom import read_series  # noqa: E402
from spinegrade.synthetic.dataset import generate_study  # noqa: E402

COLOURS = {"Normal/Mild": "lime", "Moderate": "yellow", "Severe": "red", "": "white"}


def _slice_of(series_dir: Path, instance: int) -> np.ndarray:
    for stack in read_series(series_dir):
        hit = np.flatnonzero(stack.instance_numbers == instance)
        if hit.size:
            return stack.pixels[int(hit[0])].astype(float)
    raise KeyError(instance)


def crops_figure(crops_dir: Path, out: Path, per_grade: int, seed: int) -> None:
    """Per group, one row per grade of ``per_grade`` crops' centre slices."""
    groups = [g for g in vocab.GROUPS if (crops_dir / f"{g}.npy").is_file()]
    rows = [(g, grade) for g in groups for grade in range(3)]
    fig, axes = plt.subplots(
        len(rows), per_grade, figsize=(per_grade * 0.9, len(rows) * 0.98), facecolor="black"
    )
    rng = np.random.default_rng(seed)
    for r, (group, grade) in enumerate(rows):
        crops = np.load(crops_dir / f"{group}.npy", mmap_mode="r")
        index = pd.read_csv(crops_dir / f"{group}.csv")
        members = np.flatnonzero(index["label"].to_numpy() == grade)
        chosen = np.sort(rng.choice(members, size=min(per_grade, len(members)), replace=False))
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(chosen):
                crop = np.asarray(crops[chosen[c]])
                ax.imshow(crop[crop.shape[0] // 2], cmap="gray", vmin=0, vmax=255)
        axes[r, 0].text(
            -0.15,
            0.5,
            f"{group}\n{vocab.SEVERITIES[grade]}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            color="w",
            fontsize=7,
        )
    fig.subplots_adjust(left=0.14, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.08)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="black")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=3, help="study index (seeds the study)")
    ap.add_argument("--seed", type=int, default=SyntheticConfig().seed)
    ap.add_argument("--difficulty", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("docs/synthetic-study.png"))
    ap.add_argument("--crops", type=Path, default=Path("data/crops"), help="crop-rois output")
    ap.add_argument("--crops-out", type=Path, default=Path("docs/synthetic-crops.png"))
    ap.add_argument("--per-grade", type=int, default=10, help="crops per grade and group")
    args = ap.parse_args()
    cfg = SyntheticConfig(difficulty=args.difficulty, missing_label_rate=0.0)
    study_id = 10**7 + args.index
    with tempfile.TemporaryDirectory() as tmp:
        job = (cfg, args.seed, args.index, study_id, [101, 102, 103, 104], Path(tmp))
        rows = generate_study(job)
        labels = rows["labels"][0]
        coords = rows["coordinates"]
        desc = {r["series_id"]: r["series_description"] for r in rows["series"]}
        panels = [
            ("Spinal Canal Stenosis", None),
            ("Left Neural Foraminal Narrowing", None),
            ("Left Subarticular Stenosis", "L4/L5"),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
        for ax, (condition, level) in zip(axes, panels, strict=True):
            anchor = next(
                c
                for c in coords
                if c["condition"] == condition and (level is None or c["level"] == level)
            )
            sid, inst = anchor["series_id"], anchor["instance_number"]
            img = _slice_of(Path(tmp) / str(study_id) / str(sid), inst)
            ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.7))
            for c in coords:
                if c["series_id"] != sid or c["instance_number"] != inst:
                    continue
                col = f"{vocab.CONDITION_FROM_NAME[c['condition']]}_"
                col += vocab.LEVEL_FROM_NAME[c["level"]]
                grade = labels[col]
                ax.plot(c["x"], c["y"], "+", color=COLOURS[grade], ms=9, mew=1.5)
                ax.annotate(
                    f"{c['level']} {grade}",
                    (c["x"], c["y"]),
                    xytext=(6, -6),
                    textcoords="offset points",
                    color=COLOURS[grade],
                    fontsize=7,
                )
            ax.set_title(f"{desc[sid]} (instance {inst})\n{condition}", color="w", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor="black")
    print(f"wrote {args.out}")
    if (args.crops / "spinal.npy").is_file():
        crops_figure(args.crops, args.crops_out, args.per_grade, args.seed)
    else:
        print(f"no crops in {args.crops} (run dvc repro first): skipped {args.crops_out}")


if __name__ == "__main__":
    main()
