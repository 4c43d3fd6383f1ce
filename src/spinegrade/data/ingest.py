"""Read and validate an RSNA-layout dataset into one long label table and a report.

Bad input raises :class:`DataError` naming the file and line (line 1 is the header), or,
with ``on_error="skip"``, the offending row is dropped and listed with its reason. Real
quirks that are not errors (missing labels, a study without a series type, several axial
series, instance numbers that skip) are listed in the quirks table.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.data.tables import read_csv_checked, series_row_problem

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

LABEL_COLUMNS = (
    "study_id",
    "condition",
    "level",
    "severity",
    "series_id",
    "instance_number",
    "x",
    "y",
    "series_description",
)

SERIES_COLUMNS = (
    "split",
    "study_id",
    "series_id",
    "series_description",
    "n_instances",
    "bytes",
    "needed",
)


@dataclass
class Problems:
    """Collects dropped rows and quirks; raises on errors unless skipping."""

    on_error: OnError
    dropped: list[dict] = field(default_factory=list)
    quirks: list[dict] = field(default_factory=list)

    def error(self, file: str, line: int | None, reason: str) -> None:
        """A bad-input row: raise, or record it as dropped when skipping."""
        if self.on_error == "raise":
            where = f"{file}:{line}" if line is not None else file
            raise DataError(f"{where}: {reason} (set ingest.on_error: skip to drop such rows)")
        self.drop(file, line, reason)

    def drop(self, file: str, line: int | None, reason: str) -> None:
        self.dropped.append(
            {"file": file, "line": line if line is not None else "", "reason": reason}
        )

    def quirk(
        self, kind: str, study_id: int | str = "", series_id: int | str = "", detail: str = ""
    ) -> None:
        self.quirks.append(
            {"kind": kind, "study_id": study_id, "series_id": series_id, "detail": detail}
        )


@dataclass
class IngestResult:
    """Everything ingest writes: tables plus the JSON report."""

    labels: pd.DataFrame
    series: pd.DataFrame
    dropped: pd.DataFrame
    quirks: pd.DataFrame
    report: dict
    root: Path  # the dataset directory that was read


def _float(value: str) -> float | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def scan_series_dir(series_dir: Path) -> tuple[list[int], int, list[str]]:
    """Instance numbers (sorted) and total bytes of the ``{instance}.dcm`` files in a series.

    Returns (instances, bytes, bad_names) where bad_names are .dcm files whose stem is not
    an integer.
    """
    instances, total, bad = [], 0, []
    for entry in series_dir.iterdir():
        if entry.suffix != ".dcm":
            continue
        stem = vocab.parse_id(entry.stem)
        if stem is None:
            bad.append(entry.name)
            continue
        instances.append(stem)
        total += entry.stat().st_size
    return sorted(instances), total, bad


def _read_series_table(root: Path, name: str, split: str, problems: Problems) -> dict[int, dict]:
    """Validated rows of a series-descriptions CSV, keyed by series id."""
    path = root / name
    df = read_csv_checked(path, vocab.SERIES_CSV_HEADER)
    out: dict[int, dict] = {}
    for line, row in zip(df.index, df.itertuples(index=False), strict=True):
        study, series, problem = series_row_problem(row)
        if problem:
            problems.error(name, line, problem)
            continue
        if series in out:
            problems.error(name, line, f"duplicate series_id {series}")
            continue
        series_dir = root / f"{split}_images" / str(study) / str(series)
        if not series_dir.is_dir():
            problems.error(name, line, f"series directory {series_dir} not found")
            continue
        instances, size, bad = scan_series_dir(series_dir)
        for b in bad:
            problems.quirk("bad_instance_file_name", study, series, b)
        if not instances:
            problems.error(name, line, f"series directory {series_dir} holds no .dcm files")
            continue
        out[series] = {
            "split": split,
            "study_id": study,
            "series_id": series,
            "series_description": row.series_description,
            "instances": instances,
            "n_instances": len(instances),
            "bytes": size,
        }
    return out


def _read_labels(root: Path, problems: Problems) -> dict[int, dict[tuple[str, str], int]]:
    """train.csv as {study: {(condition, level): severity index}} for labelled cells."""
    name = "train.csv"
    df = read_csv_checked(root / name, vocab.TRAIN_CSV_HEADER)
    labels: dict[int, dict[tuple[str, str], int]] = {}
    for line, row in zip(df.index, df.itertuples(index=False, name=None), strict=True):
        study = vocab.parse_id(row[0])
        if study is None:
            problems.error(name, line, f"study_id must be an integer, got {row[0]!r}")
            continue
        if study in labels:
            problems.error(name, line, f"duplicate study_id {study}")
            continue
        cells: dict[tuple[str, str], int] = {}
        for col, value in zip(vocab.TRAIN_COLUMNS, row[1:], strict=True):
            condition, level = col[: -len("_l1_l2")], col[-len("l1_l2") :]
            if value == "":
                problems.quirk("missing_label", study, "", col)
                continue
            if value not in vocab.SEVERITY_INDEX:
                problems.error(
                    name,
                    line,
                    f"column {col}: unknown severity {value!r}; "
                    f"expected one of {list(vocab.SEVERITIES)} or empty",
                )
                continue
            cells[(condition, level)] = vocab.SEVERITY_INDEX[value]
        labels[study] = cells
    return labels


def ingest(root: str | Path, on_error: OnError = "raise") -> IngestResult:
    """Validate the dataset at ``root`` and build the long label table.

    Args:
        root: directory with the competition's files (docs/rsna-data.md layout).
        on_error: ``raise`` on the first bad row, or ``skip`` it and report it.

    Returns:
        IngestResult with the long label table (one row per labelled study/condition/level,
        coordinates empty where none is given), the series table, dropped rows, quirks and
        the report.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    problems = Problems(on_error)
    labels = _read_labels(root, problems)
    series = _read_series_table(root, "train_series_descriptions.csv", "train", problems)
    test_series: dict[int, dict] = {}
    if (root / "test_series_descriptions.csv").is_file():
        test_series = _read_series_table(root, "test_series_descriptions.csv", "test", problems)
    else:
        log.warning("%s: no test_series_descriptions.csv; no test series", root)

    coords = _read_coordinates(root, labels, series, problems)
    table = _long_table(labels, coords, series, problems)
    _series_quirks(labels, series, problems)

    needed = set(table["series_id"].dropna().astype("int64"))
    series_rows = []
    for s in [*series.values(), *test_series.values()]:
        row = {k: s[k] for k in SERIES_COLUMNS if k != "needed"}
        row["needed"] = s["split"] == "test" or s["series_id"] in needed
        series_rows.append(row)
    series_df = pd.DataFrame(series_rows, columns=list(SERIES_COLUMNS))
    series_df = series_df.sort_values(
        ["split", "study_id", "series_id"], kind="stable"
    ).reset_index(drop=True)
    dropped = pd.DataFrame(problems.dropped, columns=["file", "line", "reason"])
    quirks = pd.DataFrame(problems.quirks, columns=["kind", "study_id", "series_id", "detail"])
    report = _report(table, series_df, dropped, quirks, labels)
    return IngestResult(table, series_df, dropped, quirks, report, root)


def _read_coordinates(
    root: Path, labels: dict, series: dict[int, dict], problems: Problems
) -> dict[tuple[int, str, str], dict]:
    """Validated coordinate rows keyed by (study, condition, level); first one wins."""
    name = "train_label_coordinates.csv"
    df = read_csv_checked(root / name, vocab.COORDINATES_CSV_HEADER)
    out: dict[tuple[int, str, str], dict] = {}
    for line, row in zip(df.index, df.itertuples(index=False), strict=True):
        study, series_id, inst = (
            vocab.parse_id(row.study_id),
            vocab.parse_id(row.series_id),
            vocab.parse_id(row.instance_number),
        )
        x, y = _float(row.x), _float(row.y)
        if None in (study, series_id, inst):
            problems.error(
                name,
                line,
                "study_id, series_id and instance_number must be integers, got "
                f"{row.study_id!r}, {row.series_id!r}, {row.instance_number!r}",
            )
            continue
        if x is None or y is None:
            problems.error(name, line, f"x and y must be finite numbers, got {row.x!r}, {row.y!r}")
            continue
        condition = vocab.CONDITION_FROM_NAME.get(row.condition)
        if condition is None:
            problems.error(
                name,
                line,
                f"unknown condition {row.condition!r}; expected one of "
                f"{list(vocab.CONDITION_NAMES.values())}",
            )
            continue
        level = vocab.LEVEL_FROM_NAME.get(row.level)
        if level is None:
            problems.error(
                name,
                line,
                f"unknown level {row.level!r}; expected one of {list(vocab.LEVEL_NAMES.values())}",
            )
            continue
        if study not in labels:
            problems.error(name, line, f"study {study} is not in train.csv")
            continue
        s = series.get(series_id)
        if s is None or s["study_id"] != study:
            problems.error(
                name,
                line,
                f"series {series_id} of study {study} is not in train_series_descriptions.csv",
            )
            continue
        if inst not in s["instances"]:
            problems.error(
                name,
                line,
                f"instance {inst} not found: "
                f"train_images/{study}/{series_id}/{inst}.dcm does not exist",
            )
            continue
        key = (study, condition, level)
        if key in out:
            problems.drop(name, line, f"duplicate coordinates for {vocab.row_id(*key)}; first kept")
            continue
        expected = vocab.SERIES_TYPE_OF_CONDITION[condition]
        if s["series_description"] != expected:
            problems.drop(
                name,
                line,
                f"coordinates for {row.condition} lie on a "
                f"{s['series_description']} series; it is graded on {expected}",
            )
            continue
        if (condition, level) not in labels[study]:
            problems.drop(name, line, f"label {vocab.row_id(*key)} is empty in train.csv")
            continue
        out[key] = {
            "series_id": series_id,
            "instance_number": inst,
            "x": x,
            "y": y,
            "series_description": s["series_description"],
        }
    return out


def _long_table(labels: dict, coords: dict, series: dict, problems: Problems) -> pd.DataFrame:
    rows = []
    for study in sorted(labels):
        for condition in vocab.CONDITIONS:
            for level in vocab.LEVELS:
                sev = labels[study].get((condition, level))
                if sev is None:
                    continue
                c = coords.get((study, condition, level))
                if c is None:
                    problems.quirk(
                        "label_without_coordinates",
                        study,
                        "",
                        vocab.row_id(study, condition, level),
                    )
                    c = {
                        "series_id": None,
                        "instance_number": None,
                        "x": None,
                        "y": None,
                        "series_description": None,
                    }
                rows.append(
                    {
                        "study_id": study,
                        "condition": condition,
                        "level": level,
                        "severity": vocab.SEVERITIES[sev],
                        **c,
                    }
                )
    df = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    df["series_id"] = df["series_id"].astype("Int64")
    df["instance_number"] = df["instance_number"].astype("Int64")
    df["x"] = df["x"].astype("float64")
    df["y"] = df["y"].astype("float64")
    return df


def _series_quirks(labels: dict, series: dict[int, dict], problems: Problems) -> None:
    by_study: dict[int, Counter] = {s: Counter() for s in labels}
    for s in series.values():
        by_study.setdefault(s["study_id"], Counter())[s["series_description"]] += 1
        inst = s["instances"]
        if inst[0] != 1:
            problems.quirk(
                "instances_start_above_1",
                s["study_id"],
                s["series_id"],
                f"first instance {inst[0]}",
            )
        if inst[-1] - inst[0] + 1 != len(inst):
            problems.quirk(
                "instances_not_contiguous",
                s["study_id"],
                s["series_id"],
                f"{len(inst)} files span {inst[0]}..{inst[-1]}",
            )
    for study, counts in sorted(by_study.items()):
        if study not in labels:
            problems.quirk(
                "series_without_labels", study, "", "study has series but no train.csv row"
            )
        for t in vocab.SERIES_TYPES:
            if counts[t] == 0:
                problems.quirk("missing_series_type", study, "", t)
        if counts[vocab.AXIAL_T2] > 1:
            problems.quirk(
                "several_axial_series", study, "", f"{counts[vocab.AXIAL_T2]} Axial T2 series"
            )


def _report(
    table: pd.DataFrame,
    series: pd.DataFrame,
    dropped: pd.DataFrame,
    quirks: pd.DataFrame,
    labels: dict,
) -> dict:
    counts: dict[str, dict[str, int]] = {}
    missing = Counter(
        quirks.loc[quirks["kind"] == "missing_label", "detail"].map(
            lambda col: vocab.GROUP_OF_CONDITION[col[: -len("_l1_l2")]]
        )
    )
    group = table["condition"].map(vocab.GROUP_OF_CONDITION)
    for g in vocab.GROUPS:
        sev = table.loc[group == g, "severity"].value_counts()
        counts[g] = {
            vocab.SEVERITY_COLUMNS[i]: int(sev.get(s, 0)) for i, s in enumerate(vocab.SEVERITIES)
        }
        counts[g]["missing"] = int(missing.get(g, 0))
        counts[g]["with_coordinates"] = int((table.loc[group == g, "series_id"].notna()).sum())
    train = series[series["split"] == "train"]
    return {
        "studies": {
            "train": len(labels),
            "test": int(series.loc[series["split"] == "test", "study_id"].nunique()),
        },
        "series": {t: int((train["series_description"] == t).sum()) for t in vocab.SERIES_TYPES},
        "labels": counts,
        "quirks": {k: int(v) for k, v in sorted(Counter(quirks["kind"]).items())},
        "dropped_rows": {
            "total": len(dropped),
            "by_reason": {
                k: int(v) for k, v in sorted(Counter(dropped["reason"].map(_reason_kind)).items())
            },
        },
    }


def _reason_kind(reason: str) -> str:
    """A reason's stable kind for counting (the text up to its first specific value)."""
    for kind in (
        "duplicate coordinates",
        "lie on a",
        "is empty in train.csv",
        "not found",
        "unknown condition",
        "unknown level",
        "unknown severity",
        "unknown series_description",
        "is not in",
        "must be",
        "duplicate",
    ):
        if kind in reason:
            return kind.replace(" ", "_")
    return "other"
