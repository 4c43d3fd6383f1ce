"""The ``mlflow`` section: where runs go."""

from __future__ import annotations

from typing import ClassVar

from spinegrade.core.config.base import Section


class MlflowConfig(Section):
    """Where runs go. MLFLOW_TRACKING_URI overrides the default SQLite store in mlruns/."""

    key: ClassVar[str] = "mlflow"

    experiment: str = "spinegrade"
