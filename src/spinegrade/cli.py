"""Command-line plumbing shared by the stage scripts and the ``spinegrade`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once, for a command-line entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage script: its docstring as help, plus --params."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run(body: Callable[[], None]) -> int:
    """Run a command body; turn the project's expected errors into one clear line, exit 1."""
    from spinegrade.config import ConfigError
    from spinegrade.dicom import DicomError
    from spinegrade.ingest import DataError

    try:
        body()
    except (ConfigError, DataError, DicomError, FileNotFoundError) as exc:
        logging.getLogger("spinegrade").error("%s", exc)
        return 1
    return 0


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
        import dataclasses

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
