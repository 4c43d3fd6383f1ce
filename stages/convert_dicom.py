"""DVC stage convert-dicom: every needed series -> position-sorted volumes plus geometry.

Reads ingest's series.csv and source.json; writes one .npy per stack and a geometry.json
per series under --out, slices.csv mapping each instance to its stack and slice, and
skipped.csv (what convert-dicom.on_error: skip left out); counts of series, stacks, slices
and skips go to --report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.convert_dicom import ConvertConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import write_json
from spinegrade.data.convert import convert_all

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (ConvertConfig,)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--ingest", default="data/ingest", help="ingest's output directory")
    parser.add_argument("--out", default="data/volumes", help="output directory")
    parser.add_argument("--report", default="reports/convert-dicom.json", help="report")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        cfg = load_sections(args.params, *SECTIONS).convert_dicom
        ingest_dir = Path(args.ingest)
        source = json.loads((ingest_dir / "source.json").read_text())
        series = pd.read_csv(ingest_dir / "series.csv")
        report = convert_all(series, source["images_root"], args.out, cfg.workers, cfg.on_error)
        write_json(args.report, report)
        summary(
            f"{report['series_converted']} of {report['series']} series, {report['slices']} "
            f"slices ({report['skipped_files']} files skipped)",
            args.out,
            args.report,
        )

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
