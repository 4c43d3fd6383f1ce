"""ingest: the long label table, quirks, bad-input errors (raise, skip), rows dropped by design.

Every expectation is computed from the dataset's own files (the CSVs and the train_images tree),
never copied from a run. Tests that change the data work on a copy of the session dataset.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from helpers import tiny_synthetic

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.data.ingest import LABEL_COLUMNS, IngestResult, ingest
from spinegrade.synthetic.dataset import generate_dataset

TRAIN = "train.csv"
COORDS = "train_label_coordinates.csv"
SERIES = "train_series_descriptions.csv"
TEST_SERIES = "test_series_descriptions.csv"
TRAIN_CSVS = (TRAIN, COORDS, SERIES)
COORD_FIELDS = ["series_id", "instance_number", "x", "y", "series_description"]
# train.csv column -> (condition, level) slugs.
COLUMN_KEY = {f"{c}_{lv}": (c, lv) for c in vocab.CONDITIONS for lv in vocab.LEVELS}
# Ids with more digits than any generated id, so they cannot occur inside one by accident.
UNKNOWN_STUDY = "11111111111"
UNKNOWN_SERIES = "22222222222"

Key = tuple[int, str, str]


# ---------------------------------------------------------------------------------------------
# Helpers: reading and editing the dataset's CSVs
# ---------------------------------------------------------------------------------------------


def read_table(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def write_table(df: pd.DataFrame, root: Path, name: str) -> None:
    df.to_csv(root / name, index=False)


def set_cell(root: Path, name: str, row: int, column: str, value: str) -> None:
    df = read_table(root, name)
    df.loc[row, column] = value
    write_table(df, root, name)


def insert_row(root: Path, name: str, at: int, row: dict) -> None:
    """Insert ``row`` so that it becomes data row ``at`` (0-based) of the CSV."""
    df = read_table(root, name)
    new = pd.DataFrame([row], columns=df.columns)
    write_table(pd.concat([df.iloc[:at], new, df.iloc[at:]], ignore_index=True), root, name)


def line_of(row: int) -> int:
    """File line of 0-based data row ``row`` (line 1 is the header)."""
    return row + 2


def _link_or_copy(src: str, dst: str) -> str:
    if src.endswith(".dcm"):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def copy_dataset(src: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset to break. CSVs are copied; .dcm files are hard links,
    which is safe because tests only ever delete them (never write into them)."""
    return Path(shutil.copytree(src, tmp_path / "ds", copy_function=_link_or_copy))


def coord_key(row: dict) -> Key:
    return (
        int(row["study_id"]),
        vocab.CONDITION_FROM_NAME[row["condition"]],
        vocab.LEVEL_FROM_NAME[row["level"]],
    )


def label_cells(root: Path) -> dict[Key, str]:
    """Every train.csv cell, keyed by (study, condition, level), as the raw string."""
    cells = {}
    for row in read_table(root, TRAIN).to_dict("records"):
        for col, (condition, level) in COLUMN_KEY.items():
            cells[(int(row["study_id"]), condition, level)] = row[col]
    return cells


def kept_coordinate(root: Path, condition: str | None = None) -> tuple[int, dict]:
    """(index, row) of a coordinate row in the middle of the file whose label is present."""
    cells = label_cells(root)
    rows = read_table(root, COORDS).to_dict("records")
    kept = [
        i
        for i, r in enumerate(rows)
        if cells[coord_key(r)] != "" and condition in (None, r["condition"])
    ]
    assert kept, "the dataset has no usable coordinate row"
    i = kept[len(kept) // 2]
    return i, rows[i]


def series_row(root: Path, series_id: str) -> int:
    """Index of ``series_id`` in train_series_descriptions.csv."""
    df = read_table(root, SERIES)
    (idx,) = df.index[df["series_id"] == series_id]
    return int(idx)


def instance_numbers(root: Path, study: int | str, series: int | str) -> list[int]:
    series_dir = root / "train_images" / str(study) / str(series)
    return sorted(int(p.stem) for p in series_dir.glob("*.dcm"))


# ---------------------------------------------------------------------------------------------
# Helpers: reading results
# ---------------------------------------------------------------------------------------------


def keyed(labels: pd.DataFrame) -> pd.DataFrame:
    return labels.set_index(["study_id", "condition", "level"])


def table_keys(labels: pd.DataFrame) -> set[Key]:
    return set(keyed(labels).index)


def keys_where(labels: pd.DataFrame, **equal) -> frozenset[Key]:
    """Label keys of the rows whose columns equal the given values."""
    mask = pd.Series(True, index=labels.index)
    for column, value in equal.items():
        mask &= labels[column] == value
    return frozenset(table_keys(labels[mask]))


def quirks_of(result: IngestResult, kind: str) -> pd.DataFrame:
    return result.quirks[result.quirks["kind"] == kind]


def dropped_at(result: IngestResult, file: str, line: int) -> pd.DataFrame:
    d = result.dropped
    return d[(d["file"] == file) & (d["line"] == line)]


def assert_dropped(result: IngestResult, file: str, line: int, *words: str) -> None:
    rows = dropped_at(result, file, line)
    assert len(rows) >= 1, f"{file}:{line} not in dropped:\n{result.dropped}"
    reasons = " | ".join(rows["reason"])
    for word in words:
        assert word in reasons


def assert_report_matches_tables(result: IngestResult) -> None:
    """The report's counts add up to the label, quirk and dropped tables."""
    report, labels = result.report, result.labels
    group = labels["condition"].map(vocab.GROUP_OF_CONDITION)
    missing = quirks_of(result, "missing_label")["detail"].map(
        lambda col: vocab.GROUP_OF_CONDITION[COLUMN_KEY[col][0]]
    )
    for name in vocab.GROUPS:
        counts = report["labels"][name]
        in_group = labels[group == name]
        for column, severity in zip(vocab.SEVERITY_COLUMNS, vocab.SEVERITIES, strict=True):
            assert counts[column] == int((in_group["severity"] == severity).sum())
        assert sum(counts[c] for c in vocab.SEVERITY_COLUMNS) == len(in_group)
        assert counts["with_coordinates"] == int(in_group["series_id"].notna().sum())
        assert counts["missing"] == int((missing == name).sum())
    assert report["quirks"] == dict(Counter(result.quirks["kind"]))
    assert report["dropped_rows"]["total"] == len(result.dropped)
    assert sum(report["dropped_rows"]["by_reason"].values()) == len(result.dropped)


# ---------------------------------------------------------------------------------------------
# 1. The clean tiny dataset
# ---------------------------------------------------------------------------------------------


def test_label_table_has_exactly_the_label_columns(tiny_ingest):
    assert list(tiny_ingest.labels.columns) == list(LABEL_COLUMNS)


def test_one_label_row_per_non_empty_train_cell(tiny_dataset, tiny_ingest):
    cells = label_cells(tiny_dataset)
    present = {k: v for k, v in cells.items() if v != ""}
    labels = tiny_ingest.labels
    assert len(labels) == len(present)
    assert table_keys(labels) == set(present)
    got = dict(zip(keyed(labels).index, keyed(labels)["severity"], strict=True))
    assert got == present


def test_severities_come_from_the_vocabulary(tiny_ingest):
    assert set(tiny_ingest.labels["severity"]) <= set(vocab.SEVERITIES)


def test_ids_are_int64(tiny_dataset, tiny_ingest):
    labels, series = tiny_ingest.labels, tiny_ingest.series
    assert labels["study_id"].dtype == "int64"
    for column in ("series_id", "instance_number"):
        assert str(labels[column].dtype).lower() == "int64"
    assert series["study_id"].dtype == "int64"
    assert series["series_id"].dtype == "int64"
    # Values survive exactly (10-digit ids must not pass through float).
    expected = {int(s) for s in read_table(tiny_dataset, SERIES)["series_id"]}
    assert set(series.loc[series["split"] == "train", "series_id"]) == expected


def test_coordinates_match_the_first_coordinate_row_of_each_label(tiny_dataset, tiny_ingest):
    coords = read_table(tiny_dataset, COORDS).to_dict("records")
    first: dict[Key, dict] = {}
    for row in coords:
        first.setdefault(coord_key(row), row)
    desc = read_table(tiny_dataset, SERIES)
    description = dict(zip(desc["series_id"].map(int), desc["series_description"], strict=True))
    n_with = 0
    for key, row in keyed(tiny_ingest.labels).iterrows():
        src = first.get(key)
        if src is None:
            assert row[COORD_FIELDS].isna().all(), key
            continue
        n_with += 1
        assert row["series_id"] == int(src["series_id"])
        assert row["instance_number"] == int(src["instance_number"])
        assert row["x"] == float(src["x"])
        assert row["y"] == float(src["y"])
        assert row["series_description"] == description[int(src["series_id"])]
    assert n_with == len(set(first) & table_keys(tiny_ingest.labels)) > 0


def test_labels_without_coordinates_are_quirks(tiny_ingest):
    labels = tiny_ingest.labels
    bare = labels[labels["series_id"].isna()]
    expected = {vocab.row_id(*k) for k in table_keys(bare)}
    assert set(quirks_of(tiny_ingest, "label_without_coordinates")["detail"]) == expected


def test_missing_labels_are_quirks_and_not_in_the_table(tiny_dataset, tiny_ingest):
    missing = {k for k, v in label_cells(tiny_dataset).items() if v == ""}
    assert missing, "the tiny dataset should have some empty train.csv cells"
    q = quirks_of(tiny_ingest, "missing_label")
    got = {(int(s), *COLUMN_KEY[col]) for s, col in zip(q["study_id"], q["detail"], strict=True)}
    assert got == missing
    assert not missing & table_keys(tiny_ingest.labels)


def test_coordinates_of_empty_labels_are_the_only_dropped_rows(tiny_dataset, tiny_ingest):
    cells = label_cells(tiny_dataset)
    rows = read_table(tiny_dataset, COORDS).to_dict("records")
    expected = {line_of(i) for i, r in enumerate(rows) if cells[coord_key(r)] == ""}
    dropped = tiny_ingest.dropped
    assert set(dropped["file"]) <= {COORDS}
    assert set(dropped["line"]) == expected
    assert dropped["reason"].str.contains("is empty in train.csv").all()


def test_report_counts_match_train_csv_and_add_up_to_the_table(tiny_dataset, tiny_ingest):
    report = tiny_ingest.report
    cells = label_cells(tiny_dataset)
    for name in vocab.GROUPS:
        counts = report["labels"][name]
        raw = Counter(v for k, v in cells.items() if vocab.GROUP_OF_CONDITION[k[1]] == name)
        for column, severity in zip(vocab.SEVERITY_COLUMNS, vocab.SEVERITIES, strict=True):
            assert counts[column] == raw[severity]
        assert counts["missing"] == raw[""]
    assert report["studies"]["train"] == len(read_table(tiny_dataset, TRAIN))
    assert report["studies"]["test"] == read_table(tiny_dataset, TEST_SERIES)["study_id"].nunique()
    descriptions = Counter(read_table(tiny_dataset, SERIES)["series_description"])
    assert report["series"] == {t: descriptions[t] for t in vocab.SERIES_TYPES}
    assert_report_matches_tables(tiny_ingest)


def test_series_table_lists_train_and_test_series(tiny_dataset, tiny_ingest):
    series = tiny_ingest.series
    for split, name in (("train", SERIES), ("test", TEST_SERIES)):
        got = series[series["split"] == split]
        listed = read_table(tiny_dataset, name)["series_id"]
        assert set(got["series_id"]) == {int(s) for s in listed}
    train = series[series["split"] == "train"]
    for row in train.itertuples():
        assert row.n_instances == len(instance_numbers(tiny_dataset, row.study_id, row.series_id))
    needed = set(tiny_ingest.labels["series_id"].dropna())
    assert set(train.loc[train["needed"], "series_id"]) == needed
    assert series.loc[series["split"] == "test", "needed"].all()


# ---------------------------------------------------------------------------------------------
# 2. Quirk detection
# ---------------------------------------------------------------------------------------------


def test_several_axial_series_found(tiny_dataset, tiny_ingest):
    desc = read_table(tiny_dataset, SERIES)
    axial = Counter(desc.loc[desc["series_description"] == vocab.AXIAL_T2, "study_id"])
    expected = {int(s) for s, n in axial.items() if n > 1}
    assert expected, "multi_axial_rate 0.4 should give a study with several Axial T2 series"
    got = quirks_of(tiny_ingest, "several_axial_series")
    assert set(got["study_id"].map(int)) == expected
    assert len(got) == len(expected)


@pytest.mark.parametrize(
    "kind, is_quirky",
    [
        ("instances_start_above_1", lambda nums: nums[0] != 1),
        ("instances_not_contiguous", lambda nums: nums[-1] - nums[0] + 1 != len(nums)),
    ],
)
def test_instance_number_quirks_found(tiny_dataset, tiny_ingest, kind, is_quirky):
    desc = read_table(tiny_dataset, SERIES)
    expected = {
        (int(s), int(r))
        for s, r in zip(desc["study_id"], desc["series_id"], strict=True)
        if is_quirky(instance_numbers(tiny_dataset, s, r))
    }
    assert expected, "instance_quirk_rate 0.5 should give some quirky series"
    q = quirks_of(tiny_ingest, kind)
    assert set(zip(q["study_id"].map(int), q["series_id"].map(int), strict=True)) == expected
    assert len(q) == len(expected)


@pytest.fixture(scope="module")
def missing_series_dataset(tmp_path_factory) -> Path:
    cfg = tiny_synthetic(missing_series_rate=1.0, n_train_studies=2, n_test_studies=1)
    return generate_dataset(cfg, tmp_path_factory.mktemp("missing_series") / "raw")


def test_missing_series_type_found(missing_series_dataset):
    result = ingest(missing_series_dataset)
    desc = read_table(missing_series_dataset, SERIES)
    present = {
        (int(s), d) for s, d in zip(desc["study_id"], desc["series_description"], strict=True)
    }
    studies = {int(s) for s in read_table(missing_series_dataset, TRAIN)["study_id"]}
    expected = {(s, t) for s in studies for t in vocab.SERIES_TYPES if (s, t) not in present}
    assert expected, "missing_series_rate 1.0 should drop a series type"
    q = quirks_of(result, "missing_series_type")
    assert set(zip(q["study_id"].map(int), q["detail"], strict=True)) == expected
    # The groups graded on a missing series type have labels but no coordinates.
    labels = result.labels
    for study, series_type in expected:
        rows = labels[
            (labels["study_id"] == study)
            & (labels["condition"].map(vocab.SERIES_TYPE_OF_CONDITION) == series_type)
        ]
        assert len(rows) > 0
        assert rows["series_id"].isna().all()


def test_missing_test_series_file_means_no_test_series(tiny_dataset, tiny_ingest, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path)
    (root / TEST_SERIES).unlink()
    result = ingest(root)
    assert set(result.series["split"]) == {"train"}
    assert result.report["studies"]["test"] == 0
    pd.testing.assert_frame_equal(result.labels, tiny_ingest.labels)


# ---------------------------------------------------------------------------------------------
# 3. Bad input: file-level errors (raise in both modes: there is no row to drop)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("name", TRAIN_CSVS)
def test_missing_csv_raises(tiny_dataset, tmp_path, name, on_error):
    root = copy_dataset(tiny_dataset, tmp_path)
    (root / name).unlink()
    with pytest.raises(DataError, match="not found") as info:
        ingest(root, on_error=on_error)
    assert name in str(info.value)


def test_missing_dataset_directory_raises(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ingest(tmp_path / "nowhere")


HEADER_EDITS: dict[str, Callable[[pd.DataFrame], tuple[pd.DataFrame, str]]] = {
    # Each returns the edited table and a word the error message must contain.
    "renamed": lambda df: (
        df.rename(columns={df.columns[1]: df.columns[1].upper()}),
        df.columns[1].upper(),
    ),
    "missing": lambda df: (df.drop(columns=df.columns[1]), df.columns[1]),
    "extra": lambda df: (df.assign(notes=""), "notes"),
    "reordered": lambda df: (
        df[[df.columns[0], df.columns[2], df.columns[1], *df.columns[3:]]],
        "out of order",
    ),
}


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("edit", HEADER_EDITS)
@pytest.mark.parametrize("name", TRAIN_CSVS)
def test_wrong_header_raises(tiny_dataset, tmp_path, name, edit, on_error):
    root = copy_dataset(tiny_dataset, tmp_path)
    df, word = HEADER_EDITS[edit](read_table(root, name))
    write_table(df, root, name)
    with pytest.raises(DataError, match="wrong header") as info:
        ingest(root, on_error=on_error)
    message = str(info.value)
    assert name in message
    assert word in message


# ---------------------------------------------------------------------------------------------
# 3. Bad input: row errors. Each case edits a copy and says where the error must point.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadRow:
    """Where a bad row is and what ingest must do with it.

    file/line: where the error must point; value: the offending value and says: a phrase
    naming the problem, both of which must appear in the error message and the drop reason;
    removed / uncoordinated: label keys that must leave the table / lose their coordinates
    when skipping (every other label row must come through unchanged).
    """

    file: str
    line: int
    value: str
    says: str
    removed: frozenset[Key] = frozenset()
    uncoordinated: frozenset[Key] = frozenset()


BadCase = Callable[[Path, pd.DataFrame], BadRow]
BAD_ROWS: dict[str, BadCase] = {}


def bad_row(name: str) -> Callable[[BadCase], BadCase]:
    def register(fn: BadCase) -> BadCase:
        BAD_ROWS[name] = fn
        return fn

    return register


def _coordinate_edit(
    edits: Callable[[Path, dict], dict[str, str]], value: str, says: str
) -> BadCase:
    """A case that overwrites cells of a kept coordinate row; ``value`` is the offending one."""

    def case(root: Path, clean: pd.DataFrame) -> BadRow:
        i, row = kept_coordinate(root)
        changes = edits(root, row)
        for column, new in changes.items():
            set_cell(root, COORDS, i, column, new)
        offending = value.format(**changes)
        return BadRow(
            COORDS, line_of(i), offending, says, uncoordinated=frozenset({coord_key(row)})
        )

    return case


def _series_of_another_study(root: Path, row: dict) -> dict[str, str]:
    """The same type of series in another study, at an instance that exists there."""
    desc = read_table(root, SERIES)
    mine = desc.loc[desc["series_id"] == row["series_id"], "series_description"].item()
    other = desc[(desc["study_id"] != row["study_id"]) & (desc["series_description"] == mine)]
    study, series = other[["study_id", "series_id"]].iloc[0]
    return {"series_id": series, "instance_number": str(instance_numbers(root, study, series)[0])}


BAD_ROWS.update(
    {
        "coordinates_unknown_condition": _coordinate_edit(
            lambda root, row: {"condition": "Spinal Stenosis"}, "{condition}", "unknown condition"
        ),
        "coordinates_unknown_level": _coordinate_edit(
            lambda root, row: {"level": "L5-S1"}, "{level}", "unknown level"
        ),
        "coordinates_non_integer_instance_number": _coordinate_edit(
            lambda root, row: {"instance_number": row["instance_number"] + ".0"},
            "{instance_number}",
            "must be integers",
        ),
        "coordinates_non_numeric_x": _coordinate_edit(
            lambda root, row: {"x": "12.5px"}, "{x}", "must be finite numbers"
        ),
        "coordinates_study_not_in_train_csv": _coordinate_edit(
            lambda root, row: {"study_id": UNKNOWN_STUDY}, "{study_id}", "is not in train.csv"
        ),
        "coordinates_series_not_in_descriptions": _coordinate_edit(
            lambda root, row: {"series_id": UNKNOWN_SERIES}, "{series_id}", f"is not in {SERIES}"
        ),
        "coordinates_series_of_another_study": _coordinate_edit(
            _series_of_another_study, "{series_id}", f"is not in {SERIES}"
        ),
    }
)


@bad_row("coordinates_instance_file_missing")
def _(root: Path, clean: pd.DataFrame) -> BadRow:
    _, row = kept_coordinate(root)
    study, series, inst = row["study_id"], row["series_id"], row["instance_number"]
    (root / "train_images" / study / series / f"{inst}.dcm").unlink()
    # Every row on that instance now fails; the first one is where raising stops.
    coords = read_table(root, COORDS)
    hits = coords.index[
        (coords["study_id"] == study)
        & (coords["series_id"] == series)
        & (coords["instance_number"] == inst)
    ]
    lost = keys_where(clean, study_id=int(study), series_id=int(series), instance_number=int(inst))
    return BadRow(
        COORDS,
        line_of(int(hits.min())),
        f"train_images/{study}/{series}/{inst}.dcm",
        "not found",
        uncoordinated=lost,
    )


@bad_row("train_csv_unknown_severity")
def _(root: Path, clean: pd.DataFrame) -> BadRow:
    _, row = kept_coordinate(root)
    key = coord_key(row)
    df = read_table(root, TRAIN)
    (idx,) = df.index[df["study_id"] == row["study_id"]]
    set_cell(root, TRAIN, int(idx), f"{key[1]}_{key[2]}", "Normal/mild")
    return BadRow(
        TRAIN, line_of(int(idx)), "Normal/mild", "unknown severity", removed=frozenset({key})
    )


@bad_row("train_csv_non_integer_study_id")
def _(root: Path, clean: pd.DataFrame) -> BadRow:
    df = read_table(root, TRAIN)
    idx = len(df) // 2
    study = df.loc[idx, "study_id"]
    set_cell(root, TRAIN, idx, "study_id", study + ".0")
    return BadRow(
        TRAIN,
        line_of(idx),
        study + ".0",
        "must be an integer",
        removed=keys_where(clean, study_id=int(study)),
    )


@bad_row("train_csv_duplicate_study")
def _(root: Path, clean: pd.DataFrame) -> BadRow:
    df = read_table(root, TRAIN)
    insert_row(root, TRAIN, len(df), df.iloc[len(df) // 2].to_dict())
    return BadRow(TRAIN, line_of(len(df)), df.loc[len(df) // 2, "study_id"], "duplicate study_id")


def _series_edit(edit: Callable[[Path, int, str], str], says: str) -> BadCase:
    """A case that breaks the descriptions row (or directory) of a series with coordinates."""

    def case(root: Path, clean: pd.DataFrame) -> BadRow:
        _, row = kept_coordinate(root)
        series = row["series_id"]
        idx = series_row(root, series)
        value = edit(root, idx, series)
        return BadRow(
            SERIES,
            line_of(idx),
            value,
            says,
            uncoordinated=keys_where(clean, series_id=int(series)),
        )

    return case


def _non_integer_series_id(root: Path, idx: int, series: str) -> str:
    set_cell(root, SERIES, idx, "series_id", series + ".0")
    return series + ".0"


def _unknown_description(root: Path, idx: int, series: str) -> str:
    set_cell(root, SERIES, idx, "series_description", "Axial T1")
    return "Axial T1"


def _series_directory_missing(root: Path, idx: int, series: str) -> str:
    study = read_table(root, SERIES).loc[idx, "study_id"]
    shutil.rmtree(root / "train_images" / study / series)
    return f"train_images/{study}/{series}"


BAD_ROWS.update(
    {
        "descriptions_non_integer_series_id": _series_edit(
            _non_integer_series_id, "must be integers"
        ),
        "descriptions_unknown_series_description": _series_edit(
            _unknown_description, "unknown series_description"
        ),
        "descriptions_series_directory_missing": _series_edit(
            _series_directory_missing, "not found"
        ),
    }
)


@bad_row("descriptions_duplicate_series")
def _(root: Path, clean: pd.DataFrame) -> BadRow:
    df = read_table(root, SERIES)
    insert_row(root, SERIES, len(df), df.iloc[0].to_dict())
    return BadRow(SERIES, line_of(len(df)), df.loc[0, "series_id"], "duplicate series_id")


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_raises_naming_file_line_and_value(tiny_dataset, tiny_ingest, tmp_path, case):
    root = copy_dataset(tiny_dataset, tmp_path)
    bad = BAD_ROWS[case](root, tiny_ingest.labels)
    with pytest.raises(DataError) as info:
        ingest(root)
    message = str(info.value)
    assert message.startswith(f"{bad.file}:{bad.line}:"), message
    assert bad.value in message
    assert bad.says in message


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_is_dropped_when_skipping(tiny_dataset, tiny_ingest, tmp_path, case):
    root = copy_dataset(tiny_dataset, tmp_path)
    bad = BAD_ROWS[case](root, tiny_ingest.labels)
    result = ingest(root, on_error="skip")
    assert_dropped(result, bad.file, bad.line, bad.value, bad.says)
    assert_report_matches_tables(result)

    # Everything else is ingested unchanged.
    clean, got = keyed(tiny_ingest.labels), keyed(result.labels)
    assert table_keys(result.labels) == table_keys(tiny_ingest.labels) - bad.removed
    for key in bad.uncoordinated:
        assert clean.loc[key, COORD_FIELDS].notna().all()
        assert got.loc[key, COORD_FIELDS].isna().all()
    others = [k for k in clean.index if k not in bad.removed | bad.uncoordinated]
    assert len(others) > len(clean) // 2
    pd.testing.assert_frame_equal(got.loc[others], clean.loc[others])


# ---------------------------------------------------------------------------------------------
# Robustness of id parsing and line numbers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["99999999999999999999", "12³"], ids=["beyond_int64", "superscript_digit"]
)
def test_study_id_that_is_not_an_int64_is_a_data_error(tiny_dataset, tmp_path, value):
    """Ids must fit int64 (rsna-data.md); str.isdigit() also accepts digits int() rejects."""
    root = copy_dataset(tiny_dataset, tmp_path)
    set_cell(root, TRAIN, 1, "study_id", value)
    with pytest.raises(DataError) as info:
        ingest(root)
    message = str(info.value)
    assert message.startswith(f"{TRAIN}:{line_of(1)}:"), message
    assert value in message


def test_error_line_is_the_file_line_after_a_blank_line(tiny_dataset, tmp_path):
    """pandas skips blank lines, so counting parsed rows must not stand in for file lines."""
    root = copy_dataset(tiny_dataset, tmp_path)
    i, _ = kept_coordinate(root)
    assert i > 1
    set_cell(root, COORDS, i, "level", "L5-S1")
    lines = (root / COORDS).read_text().splitlines(keepends=True)
    lines.insert(2, "\n")  # a blank line after the first data row
    (root / COORDS).write_text("".join(lines))
    assert lines[line_of(i)].split(",")[4] == "L5-S1"  # the bad row is now on line i + 3
    with pytest.raises(DataError) as info:
        ingest(root)
    assert str(info.value).startswith(f"{COORDS}:{line_of(i) + 1}:"), str(info.value)


# ---------------------------------------------------------------------------------------------
# 4. Rows dropped by design, even when raising
# ---------------------------------------------------------------------------------------------


def test_duplicate_coordinates_keep_the_first(tiny_dataset, tiny_ingest, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path)
    i, row = kept_coordinate(root)
    first = {**row, "x": str(float(row["x"]) + 1.5), "y": str(float(row["y"]) - 2.25)}
    insert_row(root, COORDS, i, first)  # the original row moves to line i + 3
    result = ingest(root)
    assert_report_matches_tables(result)
    assert_dropped(result, COORDS, line_of(i + 1), "duplicate", vocab.row_id(*coord_key(row)))
    got = keyed(result.labels).loc[coord_key(row)]
    assert (got["x"], got["y"]) == (float(first["x"]), float(first["y"]))
    assert result.report["dropped_rows"]["by_reason"]["duplicate_coordinates"] == 1


def test_coordinates_on_the_wrong_series_type_are_dropped(tiny_dataset, tiny_ingest, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path)
    spinal = vocab.CONDITION_NAMES["spinal_canal_stenosis"]
    i, row = kept_coordinate(root, condition=spinal)
    desc = read_table(root, SERIES)
    t1 = desc[
        (desc["study_id"] == row["study_id"]) & (desc["series_description"] == vocab.SAGITTAL_T1)
    ]["series_id"].iloc[0]
    inst = instance_numbers(root, row["study_id"], t1)[0]
    insert_row(root, COORDS, i, {**row, "series_id": t1, "instance_number": str(inst)})
    result = ingest(root)
    assert_report_matches_tables(result)
    assert_dropped(result, COORDS, line_of(i), vocab.SAGITTAL_T1, "lie on a")
    # The wrongly placed row does not block the right one that follows it.
    key = coord_key(row)
    got, clean = keyed(result.labels).loc[key], keyed(tiny_ingest.labels).loc[key]
    pd.testing.assert_series_equal(got, clean)
    assert result.report["dropped_rows"]["by_reason"]["lie_on_a"] == 1


def test_coordinates_of_an_empty_label_are_dropped(tiny_dataset, tiny_ingest, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path)
    i, row = kept_coordinate(root)
    key = coord_key(row)
    df = read_table(root, TRAIN)
    (idx,) = df.index[df["study_id"] == row["study_id"]]
    column = f"{key[1]}_{key[2]}"
    set_cell(root, TRAIN, int(idx), column, "")
    result = ingest(root)
    assert_report_matches_tables(result)
    assert_dropped(result, COORDS, line_of(i), "is empty in train.csv", vocab.row_id(*key))
    assert key not in table_keys(result.labels)
    assert table_keys(result.labels) == table_keys(tiny_ingest.labels) - {key}
    q = quirks_of(result, "missing_label")
    assert ((q["study_id"] == key[0]) & (q["detail"] == column)).sum() == 1
    group = vocab.GROUP_OF_CONDITION[key[1]]
    before, after = tiny_ingest.report["labels"][group], result.report["labels"][group]
    assert after["missing"] == before["missing"] + 1
    assert after["with_coordinates"] == before["with_coordinates"] - 1
