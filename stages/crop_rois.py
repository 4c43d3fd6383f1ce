"""DVC stage crop-rois: 2.5D crops around each labelled point, per condition group.

Writes {group}.npy ((N, k, size_px, size_px) uint8) and {group}.csv (row i describes crop i)
under --out for the groups spinal, foraminal and subarticular, and the crop counts per group
(with the rows dropped for want of a converted slice) to --report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, write_csv, write_json, write_npy
from spinegrade.data.crops import build_crops

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (CropConfig,)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--labels", default="data/ingest/labels.csv", help="ingest's label table")
    parser.add_argument(
        "--volumes", default="data/volumes", help="convert-dicom's output directory"
    )
    parser.add_argument("--out", default="data/crops", help="output directory")
    parser.add_argument("--report", default="reports/crop-rois.json", help="report")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        cfg = load_sections(args.params, *SECTIONS).crop_rois
        labels = pd.read_csv(args.labels, dtype={"series_id": "Int64", "instance_number": "Int64"})
        slices = pd.read_csv(Path(args.volumes) / "slices.csv")
        groups, report = build_crops(labels, slices, args.volumes, cfg)
        with atomic_dir(args.out) as tmp:
            for name, g in groups.items():
                write_npy(tmp / f"{name}.npy", g.crops)
                write_csv(tmp / f"{name}.csv", g.index)
        write_json(args.report, report)
        counts = ", ".join(f"{name} {g.crops.shape[0]}" for name, g in groups.items())
        summary(f"crops: {counts}", args.out, args.report)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
