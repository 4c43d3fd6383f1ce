"""The ``convert-dicom`` section."""

from __future__ import annotations

from typing import ClassVar, Literal

from spinegrade.core.config.base import Section


class ConvertConfig(Section):
    """convert-dicom: parallelism and what to do with an unreadable file."""

    key: ClassVar[str] = "convert-dicom"

    workers: int = 2
    on_error: Literal["raise", "skip"] = "raise"
