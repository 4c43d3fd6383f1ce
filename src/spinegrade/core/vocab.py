"""The dataset's vocabulary: conditions, levels, severities, series types, groups, row ids,
the competition files' headers and the ensemble's model name.

Every per-condition loop in the project is generated from the tuples here, and every
spelling that appears in the RSNA files is defined here once (see docs: docs/rsna-data.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Conditions in train.csv column order, as snake-case slugs (used in row_id and columns).
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)

# The spelling train_label_coordinates.csv uses for each condition.
CONDITION_NAMES: dict[str, str] = {c: c.replace("_", " ").title() for c in CONDITIONS}

CONDITION_FROM_NAME: dict[str, str] = {v: k for k, v in CONDITION_NAMES.items()}

LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

LEVEL_NAMES: dict[str, str] = {lv: lv.upper().replace("_", "/") for lv in LEVELS}

LEVEL_FROM_NAME: dict[str, str] = {v: k for k, v in LEVEL_NAMES.items()}

# Severity strings as train.csv spells them, in class-index order.
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")

SEVERITY_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")

RAW_SEVERITY_COLUMNS: tuple[str, ...] = tuple(f"raw_{c}" for c in SEVERITY_COLUMNS)
"""Out-of-fold probabilities before temperature scaling (SEVERITY_COLUMNS hold them after)."""

ENSEMBLE = "ensemble"
"""The model name of the mean of a group's backbones (evaluate scores it, predict may use it)."""


def ensemble_oof_csv(group: str) -> str:
    """The ensemble's OOF table of ``group`` in evaluate's output (compare-backbones reads it)."""
    return f"oof_{ENSEMBLE}_{group}.csv"


SEVERITY_INDEX: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}

# Sample weights of the official metric (docs/rsna-metric.md), by class index.
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

SAGITTAL_T1 = "Sagittal T1"

SAGITTAL_T2 = "Sagittal T2/STIR"

AXIAL_T2 = "Axial T2"

SERIES_TYPES: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)

# File- and param-safe names of the series types (localizer directories, matrix keys).
SERIES_SLUGS: dict[str, str] = {
    SAGITTAL_T1: "sagittal_t1",
    SAGITTAL_T2: "sagittal_t2",
    AXIAL_T2: "axial_t2",
}

SERIES_FROM_SLUG: dict[str, str] = {v: k for k, v in SERIES_SLUGS.items()}


@dataclass(frozen=True)
class Group:
    """A condition group: the conditions one model grades and the series it reads."""

    name: str
    conditions: tuple[str, ...]
    series_type: str

    @property
    def sided(self) -> bool:
        """True when the group's conditions come in left/right pairs."""
        return len(self.conditions) > 1


GROUPS: dict[str, Group] = {
    "spinal": Group("spinal", CONDITIONS[0:1], SAGITTAL_T2),
    "foraminal": Group("foraminal", CONDITIONS[1:3], SAGITTAL_T1),
    "subarticular": Group("subarticular", CONDITIONS[3:5], AXIAL_T2),
}

GROUP_OF_CONDITION: dict[str, str] = {c: g.name for g in GROUPS.values() for c in g.conditions}

SERIES_TYPE_OF_CONDITION: dict[str, str] = {
    c: g.series_type for g in GROUPS.values() for c in g.conditions
}

TRAIN_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)

# Exact headers of the competition files.
TRAIN_CSV_HEADER: tuple[str, ...] = ("study_id", *TRAIN_COLUMNS)

COORDINATES_CSV_HEADER: tuple[str, ...] = (
    "study_id",
    "series_id",
    "instance_number",
    "condition",
    "level",
    "x",
    "y",
)

SERIES_CSV_HEADER: tuple[str, ...] = ("study_id", "series_id", "series_description")

SUBMISSION_HEADER: tuple[str, ...] = ("row_id", *SEVERITY_COLUMNS)

# Extra files the synthetic generator writes next to the competition files: the answers for
# its held-out test studies (read by the predict stage to score itself, never by training).
TEST_LABELS_CSV = "synthetic_test_labels.csv"
TEST_COORDINATES_CSV = "synthetic_test_label_coordinates.csv"

INT64_MAX = 2**63 - 1


def parse_id(value: object) -> int | None:
    """A study, series or instance id as an int, or None when it is not one.

    Accepts ints (not bools) and strings of ASCII digits (surrounding blanks ignored), in
    the int64 range the competition files use; anything else (signs, decimals, other
    scripts' digits, overflow) gives None, for the caller to name the file and row.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if 0 <= number <= INT64_MAX else None


def side_of(condition: str) -> str:
    """Return "left", "right" or "" (for the unsided spinal condition)."""
    head = condition.split("_", 1)[0]
    return head if head in ("left", "right") else ""


def row_id(study_id: int, condition: str, level: str) -> str:
    """Submission row id, e.g. ``44036939_spinal_canal_stenosis_l1_l2``."""
    return f"{int(study_id)}_{condition}_{level}"


def parse_row_id(value: str) -> tuple[int, str, str]:
    """Split a row id into (study_id, condition, level); raise ValueError if malformed."""
    study, _, rest = value.partition("_")
    for lv in LEVELS:
        if rest.endswith("_" + lv):
            condition = rest[: -len(lv) - 1]
            if condition in CONDITIONS and study.isdigit():
                return int(study), condition, lv
    raise ValueError(f"malformed row_id {value!r}")
