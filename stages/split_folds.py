"""DVC stage split-folds: study-level folds stratified on severity.

Writes --out (study_id, fold) and a per-fold class-count report.
"""

from __future__ import annotations

import sys

import pandas as pd

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.split_folds import FoldsConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import write_csv, write_json
from spinegrade.data.folds import fold_report, split_folds

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (FoldsConfig,)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--labels", default="data/ingest/labels.csv", help="ingest's label table")
    parser.add_argument("--out", default="data/folds.csv", help="output table")
    parser.add_argument("--report", default="reports/split-folds.json", help="report")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        cfg = load_sections(args.params, *SECTIONS).split_folds
        labels = pd.read_csv(args.labels)
        folds = split_folds(labels, cfg.n_folds, cfg.seed)
        write_csv(args.out, folds)
        write_json(args.report, fold_report(labels, folds))
        summary(
            f"{folds['study_id'].nunique()} studies in {cfg.n_folds} folds", args.out, args.report
        )

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
