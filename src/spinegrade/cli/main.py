"""The ``spinegrade`` command: tools for users outside the DVC pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from spinegrade.core import vocab
from spinegrade.core.entry import run, setup_logging
from spinegrade.core.errors import ConfigError, DataError
from spinegrade.data.tables import read_csv_checked, read_labels, read_predictions
from spinegrade.inference.files import BundleFiles

WORKSPACE = BundleFiles.workspace()  # predict's defaults: what `make repro` leaves

SCORE_NAME = "rsna score (weighted log loss, lower is better)"

SCORE_DESCRIPTION = f"""\
Score predictions against labels with the official RSNA 2024 metric:
the {SCORE_NAME}.

Prints the score and its four terms: the sample-weighted (1/2/4) log loss of the spinal,
foraminal and subarticular groups, and the per-study "any severe spinal" binary log loss;
the score is their mean. Only labelled cells are scored: empty cells in the labels are
skipped, and prediction rows for them (or for other studies) are ignored.

  --labels       train.csv format: study_id, then the 25 condition x level columns holding
                 Normal/Mild, Moderate, Severe or empty. Any subset of the studies.
  --predictions  submission format, header exactly: row_id,normal_mild,moderate,severe
                 (row_id e.g. 44036939_spinal_canal_stenosis_l1_l2). Values must be finite
                 and >= 0; rows need not sum to 1 (they are renormalized after clipping).

A labelled cell without a prediction row, duplicate row_ids or bad values are an error:
one line on stderr naming the file and row_id(s), exit code 1."""

SCORE_EPILOG = """\
examples:
  spinegrade score --labels data/raw/train.csv --predictions oof.csv
  spinegrade score --labels data/raw/train.csv --predictions oof.csv --json > score.json"""


def score_files(labels: str | Path, predictions: str | Path) -> dict[str, float]:
    """The rsna score of a predictions file against a labels file (see ``rsna_score``).

    Raises:
        DataError: bad input; the message starts with the file at fault.
    """
    from spinegrade.scoring.metrics import rsna_score, solution_from_wide

    try:
        solution = solution_from_wide(read_labels(labels))
    except DataError as exc:
        raise DataError(_prefixed(labels, exc)) from exc
    if solution.empty:
        raise DataError(f"{labels}: no labelled cells to score")
    submission = read_predictions(predictions)
    try:
        return rsna_score(solution, submission)
    except DataError as exc:
        raise DataError(_prefixed(predictions, exc)) from exc


def _prefixed(path: str | Path, exc: Exception) -> str:
    """The error message, starting with ``path`` unless it already does."""
    text = str(exc)
    return text if text.startswith(str(path)) else f"{path}: {text}"


def format_score(result: dict[str, float]) -> str:
    """A small table of the score and its terms, one per line (6 decimals)."""
    from spinegrade.scoring.metrics import TERMS

    lines = [SCORE_NAME, f"  {'score':<14}{result['score']:.6f}  (mean of the terms below)"]
    for term in TERMS:
        value = f"{result[term]:.6f}" if term in result else "n/a (no labelled rows)"
        lines.append(f"  {term:<14}{value}")
    return "\n".join(lines)


PREDICT_DESCRIPTION = """\
Grade studies that have no coordinates: localize the levels on each series type, crop
around them, grade the crops with the backbone compare-backbones chose per condition
group, and write a submission in sample_submission format (25 rows per study, the three
probabilities summing to 1).

  --images   a test_images-style tree: DIR/{study_id}/{series_id}/{instance}.dcm
  --series   test_series_descriptions.csv format: study_id,series_id,series_description.
             Optional: without it each series is routed to its type from its DICOM
             headers, first basis that decides: its SeriesDescription when that names
             a type; else its plane (ImageOrientationPatient: sagittal or axial; coronal
             and oblique series are left out) and weighting (RepetitionTime, EchoTime,
             InversionTime); else, for a sagittal series, its middle slice (the canal's
             CSF bright: T2/STIR, dark: T1); an axial series is Axial T2. One line per
             series says what was decided and on what basis, and a study lacking a type
             or with two series of one sagittal type gets a warning.
  --series-type SERIES_ID=TYPE  (repeatable, without --series) route that series to TYPE
             (Sagittal T1, Sagittal T2/STIR, Axial T2, or sagittal_t1, sagittal_t2,
             axial_t2) whatever its headers say

Models come from a finished `dvc repro` (models/, localizers/, and the model
compare-backbones chose per group: data/compare-backbones/choice.json, or its comparison
report reports/compare-backbones.json), or with --registry the graders from the MLflow Model
Registry: per group, the version compare-backbones registered as
`{experiment}-{group}@champion` (from the store MLFLOW_TRACKING_URI names, else the
workspace's). The class prior for rows that cannot be graded (a series
type missing, a level no axial slice reaches) comes from data/ingest/labels.csv. Each
such case is a warning naming the study; a corrupt DICOM file is a warning naming the file
(--on-error skip) or an error (--on-error raise).

--report writes a review page: one HTML file that opens from disk with no network, with
every study (worst first when --answers are given), the points found on each series, each
level's crop with its Grad-CAM and probabilities, and the truth with each row's cost in the
official metric when --answers (train.csv format) and --coordinates
(train_label_coordinates.csv format) are given. It shows no DICOM header field other than
geometry."""

PREDICT_EPILOG = """\
example:
  spinegrade predict --images data/raw/test_images \\
      --series data/raw/test_series_descriptions.csv --out submission.csv --explain explain/
  spinegrade predict --images uploads/ --out submission.csv \\
      --series-type 3486248476=sagittal_t1
  spinegrade predict --images data/raw/test_images \\
      --series data/raw/test_series_descriptions.csv --out submission.csv \\
      --report review.html --answers data/raw/synthetic_test_labels.csv \\
      --coordinates data/raw/synthetic_test_label_coordinates.csv"""


def read_coordinates(path: str | Path):
    """A train_label_coordinates.csv-format file, ids as int64 and x, y as floats."""
    df = read_csv_checked(Path(path), vocab.COORDINATES_CSV_HEADER)
    try:
        return df.astype(
            {
                "study_id": "int64",
                "series_id": "int64",
                "instance_number": "int64",
                "x": float,
                "y": float,
            }
        ).reset_index(drop=True)
    except ValueError as exc:
        raise DataError(
            f"{path}: a study_id, series_id, instance_number, x or y is not a number ({exc})"
        ) from exc


def parse_series_types(items: Sequence[str]) -> dict[int, str]:
    """``--series-type SERIES_ID=TYPE`` options -> {series id: type as given}.

    Raises:
        ConfigError: naming the option that is not SERIES_ID=TYPE with an integer id, or a
            series given twice.
    """
    out: dict[int, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        series_id = vocab.parse_id(key)
        if not sep or series_id is None or not value.strip():
            raise ConfigError(
                f"--series-type {item!r}: expected SERIES_ID=TYPE with an integer series id"
            )
        if series_id in out:
            raise ConfigError(f"--series-type: series {series_id} given twice")
        out[series_id] = value
    return out


def predict_series_table(args: argparse.Namespace):
    """predict's series table: the --series CSV, or (without it) every study's series routed
    by ``data.routing`` with the --series-type overrides, printing one line per series (its
    study and series folder numbers, the type, the basis and the reason) and the routing's
    warnings.

    Raises:
        ConfigError: --series-type with --series, or a bad or unknown override.
        DataError: a bad CSV or images tree.
    """
    from spinegrade.data.routing import route_studies
    from spinegrade.data.tables import read_series_table

    if args.series:
        if args.series_type:
            raise ConfigError(
                "--series-type overrides the routing, which --series replaces: "
                "change the type in the CSV instead"
            )
        return read_series_table(args.series)
    routing = route_studies(args.images, parse_series_types(args.series_type or []))
    for r in routing.series.itertuples(index=False):
        decided = r.series_description or "not routed"
        print(f"study {r.study_id} series {r.series_id}: {decided} ({r.basis}: {r.reason})")
    for warning in routing.warnings:
        print(f"routing warning: {warning}")
    table = routing.table()
    if table.empty:
        raise DataError(f"{args.images}: no series could be routed")
    return table


def predict_command(args: argparse.Namespace) -> None:
    """Run ``spinegrade predict`` with parsed arguments."""

    import tempfile

    from spinegrade.core.config.params import load_params
    from spinegrade.core.io import write_csv
    from spinegrade.core.runtime import set_threads
    from spinegrade.inference.predict import load_bundle, predict_studies, write_review
    from spinegrade.scoring.metrics import solution_from_wide

    params = load_params(args.params)
    set_threads(params.engine.threads)
    if not Path(args.images).is_dir():
        raise DataError(f"{args.images}: images directory not found")
    series = predict_series_table(args)
    with tempfile.TemporaryDirectory(prefix="spinegrade-registry-") as tmp:
        registered = None
        if args.registry:  # downloaded, then read into memory by load_bundle
            from spinegrade.tracking.registry import download_choice
            from spinegrade.tracking.store import setup

            setup(params.mlflow.experiment)
            registered = {
                g: download_choice(params.mlflow.experiment, g, Path(tmp) / g)
                for g in params.train_per_condition.groups
            }
        files = BundleFiles(args.models, args.localizers, args.selection, args.labels)
        bundle = load_bundle(files, params, registered)
    if (args.answers or args.coordinates) and not args.report:
        raise ConfigError(
            "--answers and --coordinates are shown on the --report page: add --report"
        )
    solution = solution_from_wide(read_labels(args.answers)) if args.answers else None
    coordinates = read_coordinates(args.coordinates) if args.coordinates else None
    result = predict_studies(
        args.images,
        series,
        bundle,
        coordinates=coordinates,
        on_error=args.on_error,
        explain_dir=args.explain,
        review=bool(args.report),
    )
    write_csv(args.out, result.submission)
    if args.points:
        write_csv(args.points, result.points)
    if args.report:
        page = write_review(args.report, result, bundle.selection, solution)
        print(f"wrote the review page to {page} ({page.stat().st_size / 1e6:.1f} MB)")
    print(
        f"wrote {len(result.submission)} rows for "
        f"{len(result.submission) // 25} studies to {args.out}"
        + (f" ({len(result.warnings)} warnings)" if result.warnings else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``spinegrade`` command: ``synthesize`` a dataset, ``score``, ``predict`` or
    ``serve``."""
    parser = argparse.ArgumentParser(prog="spinegrade", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("synthesize", help="write a synthetic RSNA-layout dataset to a directory")
    gen.add_argument("--out", required=True, help="directory to (re)create")
    gen.add_argument("--params", default="params.yaml", help="take synthesize from here")
    gen.add_argument("--studies", type=int, help="override the number of train studies")
    score = sub.add_parser(
        "score",
        help="score predictions against labels with the official RSNA metric",
        description=SCORE_DESCRIPTION,
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("--labels", required=True, metavar="CSV", help="labels, train.csv format")
    score.add_argument(
        "--predictions", required=True, metavar="CSV", help="predictions, submission format"
    )
    score.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object {"score", "spinal", "foraminal", "subarticular", '
        '"any_severe"} instead of the table',
    )
    pred = sub.add_parser(
        "predict",
        help="localize, crop and grade unseen studies; write a submission CSV",
        description=PREDICT_DESCRIPTION,
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("--images", required=True, metavar="DIR", help="test_images-style tree")
    pred.add_argument(
        "--series",
        metavar="CSV",
        help="series descriptions (default: route each series from its DICOM headers)",
    )
    pred.add_argument(
        "--series-type",
        action="append",
        metavar="SERIES_ID=TYPE",
        help="route this series to TYPE (repeatable; without --series)",
    )
    pred.add_argument("--out", required=True, metavar="CSV", help="submission to write")
    pred.add_argument("--explain", metavar="DIR", help="write a Grad-CAM PNG per graded level")
    pred.add_argument("--points", metavar="CSV", help="also write the localized points")
    pred.add_argument(
        "--report", metavar="HTML", help="write the review page (one self-contained HTML file)"
    )
    pred.add_argument(
        "--answers", metavar="CSV", help="the studies' labels (train.csv format), for --report"
    )
    pred.add_argument(
        "--coordinates",
        metavar="CSV",
        help="their labelled points (train_label_coordinates.csv format), for --report",
    )
    pred.add_argument(
        "--on-error",
        choices=["skip", "raise"],
        default="skip",
        help="a corrupt DICOM file: skip it with a warning, or stop (default: %(default)s)",
    )
    pred.add_argument(
        "--models", default=str(WORKSPACE.models), help="graders (default: %(default)s)"
    )
    pred.add_argument(
        "--localizers",
        default=str(WORKSPACE.localizers),
        help="localizers (default: %(default)s)",
    )
    pred.add_argument(
        "--selection",
        default=str(WORKSPACE.selection),
        help="compare-backbones' choice of model per group, or its comparison report "
        "reports/compare-backbones.json (default: %(default)s)",
    )
    pred.add_argument(
        "--labels",
        default=str(WORKSPACE.labels),
        help="training label table, for the class prior (default: %(default)s)",
    )
    pred.add_argument(
        "--registry",
        action="store_true",
        help="graders from the MLflow Model Registry ({experiment}-{group}@champion) "
        "instead of --models and --selection",
    )
    pred.add_argument("--params", default="params.yaml", help="params (default: %(default)s)")
    from spinegrade.cli import serve

    srv = sub.add_parser(
        "serve",
        help="grade studies over HTTP: an upload page and POST /v1/grade (docs/serve.md)",
        description=serve.__doc__,
        epilog=serve.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_arguments(srv)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "synthesize":
        from pydantic import ValidationError

        from spinegrade.core.config.params import load_params
        from spinegrade.core.config.synthesize import SyntheticConfig
        from spinegrade.synthetic.dataset import generate_dataset

        def body() -> None:
            cfg = load_params(args.params).synthesize
            if args.studies is not None:  # validated as the params file is (not model_copy)
                try:
                    cfg = SyntheticConfig.model_validate(
                        {**cfg.model_dump(), "n_train_studies": args.studies}
                    )
                except ValidationError as exc:
                    raise ConfigError(
                        f"--studies {args.studies}: {exc.errors()[0]['msg']}"
                    ) from None
            generate_dataset(cfg, args.out)

        return run(body)
    if args.command == "score":

        def score_body() -> None:
            result = score_files(args.labels, args.predictions)
            print(json.dumps(result) if args.json else format_score(result))

        return run(score_body)
    if args.command == "predict":
        return run(lambda: predict_command(args))
    if args.command == "serve":
        return run(lambda: serve.serve(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
