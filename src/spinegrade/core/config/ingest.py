"""The ``ingest`` section."""

from __future__ import annotations

from typing import ClassVar, Literal

from spinegrade.core.config.base import Section


class IngestConfig(Section):
    """ingest: how bad label rows are handled."""

    key: ClassVar[str] = "ingest"

    on_error: Literal["raise", "skip"] = "raise"
