"""The ``spinegrade`` command: tools for users outside the DVC pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from spinegrade.cli import run, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """The ``spinegrade`` command (sub-commands arrive with the model pipeline)."""
    parser = argparse.ArgumentParser(prog="spinegrade", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("synthesize", help="write a synthetic RSNA-layout dataset to a directory")
    gen.add_argument("--out", required=True, help="directory to (re)create")
    gen.add_argument("--params", default="params.yaml", help="take ingest.synthetic from here")
    gen.add_argument("--studies", type=int, help="override the number of train studies")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "synthesize":
        from spinegrade.config import load_params
        from spinegrade.synthetic import generate_dataset

        def body() -> None:
            cfg = load_params(args.params).ingest.synthetic
            if args.studies is not None:
                cfg = dataclasses.replace(cfg, n_train_studies=args.studies)
            generate_dataset(cfg, args.out)

        return run(body)
    return 2


if __name__ == "__main__":
    sys.exit(main())
