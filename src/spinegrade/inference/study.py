"""Grading studies that arrive as files rather than as a dataset: the code path that the
MLflow model ``spinegrade-study`` and ``spinegrade serve`` share with ``spinegrade predict``.

Studies arrive with names of the caller's choosing (a zip's top folder, a column of the
model's input); predict reads a ``{study_id}/{series_id}/`` tree with integer ids. So the
files are laid out under integer ids (1, 2, ... per study and per series, in order of
arrival), graded by :func:`~spinegrade.inference.predict.predict_studies`, and the result's
row ids and warnings are given back under the caller's names. The numbers are predict's:
the same files give the same probabilities.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.inference.page import render_page
from spinegrade.inference.predict import Bundle, PredictResult, predict_studies
from spinegrade.inference.review import StudyPictures, review_data

# What a study's name may hold: it becomes the prefix of every row_id and a page title.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class StudyFiles:
    """One study laid out for predict: ``root/{number}/{series number}/``.

    Attributes:
        name: the caller's name of the study (row ids start with it).
        number: its folder under the tree's root (predict's integer study id).
        series: series number -> the caller's series id.
    """

    name: str
    number: int
    series: dict[int, str] = field(default_factory=dict)


@dataclass
class GradedStudy:
    """A study's 25 submission rows under its own name, the points found, its warnings
    and, when asked for, what the review page shows of it."""

    name: str
    number: int
    rows: pd.DataFrame
    points: pd.DataFrame
    warnings: list[str]
    pictures: StudyPictures | None = None


def check_name(name: str) -> str:
    """``name`` if it can be a study's name (letters, digits, ``._-``; at most 64).

    Raises:
        DataError: naming the value and what is allowed.
    """
    if not NAME_PATTERN.match(name):
        raise DataError(
            f"study id {name!r}: use 1 to 64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def series_table(studies: Iterable[StudyFiles], types: dict[tuple[int, int], str]) -> pd.DataFrame:
    """predict's series table (study_id, series_id, series_description) of ``studies``,
    with ``types``: (study number, series number) -> series type; a series without a type
    is left out (predict then warns that the type is missing)."""
    rows = [
        (s.number, k, types[(s.number, k)])
        for s in studies
        for k in s.series
        if (s.number, k) in types
    ]
    table = pd.DataFrame(rows, columns=list(vocab.SERIES_CSV_HEADER))
    return table.astype({"study_id": "int64", "series_id": "int64"})


def grade_laid_out(
    root: Path,
    studies: list[StudyFiles],
    table: pd.DataFrame,
    bundle: Bundle,
    review: bool = False,
) -> list[GradedStudy]:
    """Grade the studies laid out under ``root`` with their series ``table`` (predict's
    format, integer ids), and give each result back under the study's name."""
    if not studies:
        return []
    numbers = [s.number for s in studies]
    result = predict_studies(root, table, bundle, on_error="skip", review=review, studies=numbers)
    return split_result(result, studies, root)


def split_result(result: PredictResult, studies: list[StudyFiles], root: Path) -> list[GradedStudy]:
    """Per study, its rows, points, warnings and pictures, under its own name."""
    pictures = {p.study_id: p for p in result.pictures}
    out = []
    for study in studies:
        prefix = f"{study.number}_"
        rows = result.submission[result.submission["row_id"].str.startswith(prefix)].copy()
        rows["row_id"] = study.name + "_" + rows["row_id"].str.slice(len(prefix))
        points = result.points[result.points["study_id"] == study.number].copy()
        warnings = [_renamed(w, study, root) for w in result.warnings if _about(w, study.number)]
        picture = pictures.get(study.number)
        if picture is not None:
            picture.warnings = [_renamed(w, study, root) for w in picture.warnings]
        out.append(
            GradedStudy(
                study.name,
                study.number,
                rows.reset_index(drop=True),
                points.reset_index(drop=True),
                warnings,
                picture,
            )
        )
    return out


def _about(warning: str, number: int) -> bool:
    return warning.startswith(f"study {number}:") or warning.startswith(f"study {number} ")


def _renamed(warning: str, study: StudyFiles, root: Path) -> str:
    """A predict warning about ``study`` with its number replaced by its name, each series
    number by the caller's series id, and the temporary folder left out of file paths."""
    text = re.sub(rf"^study {study.number}\b", f"study {study.name}", warning)

    def path(m: re.Match) -> str:
        return f"{study.series.get(int(m.group(1)), m.group(1))}/{m.group(2)}"

    text = re.sub(rf"{re.escape(str(root / str(study.number)))}/(\d+)/(\S+)", path, text)
    for number, given in study.series.items():
        text = re.sub(rf"\bseries {number}\b", f"series {given}", text)
    return text


def lay_out_files(frame: pd.DataFrame, root: Path) -> tuple[list[StudyFiles], dict]:
    """Write the DICOM bytes of ``frame`` (one row per file: ``dicom`` bytes,
    ``series_id``, optional ``study_id`` and ``series_description``) under ``root`` as
    predict reads them; return the studies and, per (study, series) number, the given
    series description (or None).

    Raises:
        DataError: a missing column, an empty file or a bad study id, naming the row.
    """
    for column in ("dicom", "series_id"):
        if column not in frame.columns:
            raise DataError(f"model input: no column {column!r} (columns: {list(frame.columns)})")
    studies: dict[str, StudyFiles] = {}
    numbers: dict[tuple[str, str], int] = {}  # (study name, series id) -> series number
    described: dict[tuple[int, int], str | None] = {}
    counts: dict[tuple[int, int], int] = {}
    for i, row in enumerate(frame.itertuples(index=False)):
        name = str(getattr(row, "study_id", None) or "study")
        if name == "nan":
            name = "study"
        study = studies.get(name)
        if study is None:
            study = studies[name] = StudyFiles(check_name(name), len(studies) + 1)
        given = str(row.series_id)
        number = numbers.get((name, given))
        if number is None:
            number = numbers[(name, given)] = len(study.series) + 1
            study.series[number] = given
        blob = row.dicom
        if isinstance(blob, str):  # base64, when MLflow's schema enforcement did not decode it
            try:
                blob = base64.b64decode(blob, validate=True)
            except ValueError:
                raise DataError(f"model input, row {i}: dicom is text, not base64") from None
        if not blob:
            raise DataError(f"model input, row {i}: empty dicom bytes")
        key = (study.number, number)
        counts[key] = counts.get(key, 0) + 1
        directory = root / str(study.number) / str(number)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{counts[key]}.dcm").write_bytes(bytes(blob))
        description = getattr(row, "series_description", None)
        if isinstance(description, str) and description:
            described[key] = description
        else:
            described.setdefault(key, None)
    return list(studies.values()), described


def review_html(graded: GradedStudy, models: dict[str, str]) -> str:
    """The review page of one study graded with ``review=True``, without answers."""
    if graded.pictures is None:
        raise ValueError(f"study {graded.name}: graded without review=True")
    rows = graded.rows.copy()
    rows["row_id"] = f"{graded.number}_" + rows["row_id"].str.slice(len(graded.name) + 1)
    points = graded.points.copy()
    points["study_id"] = graded.number
    index, studies = review_data([graded.pictures], rows, points, models=models)
    index["title"] = f"spinegrade: study {graded.name}"
    return render_page(index, studies)
