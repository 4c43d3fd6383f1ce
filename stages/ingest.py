"""DVC stage ingest: validate the RSNA-layout dataset at data.root into a long label table.

data.root is the synthesize stage's data/raw (data.source: synthetic) or a real download
read in place (data.source: rsna); dvc.yaml lists it as a dependency, so a changed, added
or deleted file under it re-runs this stage and everything after it. Writes to --out:
labels.csv (one row per labelled study/condition/level), series.csv, dropped.csv,
quirks.csv and source.json (where the images are); the report goes to --report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.data import DataConfig
from spinegrade.core.config.ingest import IngestConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir, write_csv, write_json
from spinegrade.data.ingest import ingest

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (DataConfig, IngestConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/ingest", help="output directory")
    parser.add_argument("--report", default="reports/ingest.json", help="report")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        root = Path(params.data.root)
        result = ingest(root, params.ingest.on_error)
        with atomic_dir(args.out) as tmp:
            write_csv(tmp / "labels.csv", result.labels)
            write_csv(tmp / "series.csv", result.series)
            write_csv(tmp / "dropped.csv", result.dropped)
            write_csv(tmp / "quirks.csv", result.quirks)
            write_json(
                tmp / "source.json", {"source": params.data.source, "images_root": str(root)}
            )
        write_json(args.report, result.report)
        studies, dropped = result.report["studies"], result.report["dropped_rows"]["total"]
        summary(
            f"{studies['train']} train and {studies['test']} test studies, "
            f"{len(result.labels):,} label rows ({dropped} dropped, "
            f"{sum(result.report['quirks'].values())} quirks)",
            args.out,
            args.report,
        )

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
