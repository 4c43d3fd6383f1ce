"""DVC stage synthesize: generate the synthetic RSNA-layout dataset into --out.

With data.source: synthetic this writes the dataset ingest reads (data.root is data/raw).
With data.source: rsna the real download is tracked by DVC itself (``dvc add data/rsna``,
or an external path) and read in place by ingest, so --out holds only a note saying so.
"""

from __future__ import annotations

import sys

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.data import DataConfig
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_dir
from spinegrade.synthetic import generate_dataset

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (DataConfig, SyntheticConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/raw", help="dataset directory to write")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        if params.data.source == "synthetic":
            generate_dataset(params.synthesize, args.out)
            cfg = params.synthesize
            summary(f"{cfg.n_train_studies} train and {cfg.n_test_studies} test studies", args.out)
            return
        with atomic_dir(args.out) as tmp:
            (tmp / "SOURCE.txt").write_text(
                f"data.source is rsna: ingest reads the download at {params.data.root} in "
                "place; nothing is generated here.\n"
            )
        summary(f"data.source is rsna: nothing to generate (ingest reads {params.data.root})")

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
