"""DVC stage ingest: get an RSNA-layout dataset and validate it into a long label table.

data.source=synthetic generates the dataset into --raw; data.source=rsna reads the download
at data.root in place (--raw then only holds a note saying so). Writes to --out:
labels.csv (one row per labelled study/condition/level), series.csv, dropped.csv,
quirks.csv and source.json (where the images are); the report goes to --report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spinegrade.core.config import load_params
from spinegrade.core.entry import run, setup_logging, stage_parser
from spinegrade.core.io import atomic_dir, write_csv, write_json
from spinegrade.data.ingest import ingest
from spinegrade.synthetic import generate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", default="data/raw", help="synthetic dataset directory")
    parser.add_argument("--out", default="data/ingest", help="output directory")
    parser.add_argument("--report", default="reports/ingest.json", help="report (DVC metric)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params)
        if params.data.source == "synthetic":
            root = generate_dataset(params.ingest.synthetic, args.raw)
        else:
            root = Path(params.data.root)
            with atomic_dir(args.raw) as tmp:
                (tmp / "SOURCE.txt").write_text(
                    f"data.source is rsna: images are read in place from {root}\n"
                )
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

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
