"""core.vocab: the one id parser every reader uses."""

from __future__ import annotations

import numpy as np
import pytest

from spinegrade.core import vocab


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("44036939", 44036939),
        (" 7 ", 7),
        (12, 12),
        (np.int64(5), 5),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_parse_id_accepts_int64_ids(value, expected):
    assert vocab.parse_id(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "-3", "+3", "3.0", "1e3", "٣", str(2**63), True, np.bool_(True), -1, 2.0, None],
)
def test_parse_id_rejects_what_is_not_an_id(value):
    assert vocab.parse_id(value) is None
