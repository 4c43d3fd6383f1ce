"""Readers of the competition's CSV files, with errors that name the file and line.

Every file is read as strings with its exact header required (``read_csv_checked``); ids
are parsed by ``vocab.parse_id``; rows are indexed by their line in the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.errors import DataError


def read_csv_checked(path: Path, header: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings and require exactly ``header``; DataError names the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    found = tuple(df.columns)
    if found != header:
        missing = [c for c in header if c not in found]
        extra = [c for c in found if c not in header]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        if not missing and not extra:
            detail.append("columns out of order")
        raise DataError(f"{path}: wrong header ({'; '.join(detail)}); expected {list(header)}")
    # Index rows by their line in the file (the header is line 1), then drop blank lines.
    df.index = pd.RangeIndex(2, len(df) + 2)
    blank = (df == "").all(axis=1)
    return df[~blank]


def series_row_problem(row) -> tuple[int | None, int | None, str | None]:
    """(study_id, series_id, None) of a valid series-descriptions row (a namedtuple of
    strings), or (..., reason) naming what is wrong with it."""
    study, series = vocab.parse_id(row.study_id), vocab.parse_id(row.series_id)
    if study is None or series is None:
        return (
            study,
            series,
            f"study_id/series_id must be integers, got {row.study_id!r}, {row.series_id!r}",
        )
    if row.series_description not in vocab.SERIES_TYPES:
        return (
            study,
            series,
            f"unknown series_description {row.series_description!r}; "
            f"expected one of {list(vocab.SERIES_TYPES)}",
        )
    return study, series, None


def read_series_table(path: str | Path) -> pd.DataFrame:
    """A (test_)series_descriptions CSV: study_id, series_id (int64), series_description.

    Raises:
        DataError: the file is missing or unreadable, has a wrong header or a bad row
            (naming the file and line).
    """
    df = read_csv_checked(Path(path), vocab.SERIES_CSV_HEADER)
    for line, row in zip(df.index, df.itertuples(index=False), strict=True):
        _, _, problem = series_row_problem(row)
        if problem:
            raise DataError(f"{path}, line {line}: {problem}")
    return df.astype({"study_id": "int64", "series_id": "int64"}).reset_index(drop=True)


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a train.csv-format file: (S, 26) strings, ``study_id`` as int64.

    Raises:
        DataError: the file is missing, unreadable, has a wrong header or a bad study_id
            (naming the file and line).
    """
    df = read_csv_checked(Path(path), vocab.TRAIN_CSV_HEADER)
    for line, value in df["study_id"].items():
        if vocab.parse_id(value) is None:
            raise DataError(f"{path}: line {line}: study_id must be an integer, got {value!r}")
    return df.assign(study_id=df["study_id"].str.strip().astype("int64"))


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a submission file: (M, 4), header exactly ``vocab.SUBMISSION_HEADER``.

    Values stay strings here; :func:`spinegrade.scoring.metrics.rsna_score` converts and
    checks them.

    Raises:
        DataError: the file is missing, unreadable or has a wrong header (naming the file).
    """
    return read_csv_checked(Path(path), vocab.SUBMISSION_HEADER)
