"""Tables logged as MLflow dataset inputs of a run (the crops index, folds, OOF tables)."""

from __future__ import annotations

import warnings

import mlflow
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset


def pandas_dataset(
    frame: pd.DataFrame, source: str, name: str, targets: str | None = None
) -> PandasDataset:
    """``frame`` as an MLflow dataset read from ``source`` (a workspace path).

    Integer columns are logged as float64, the type MLflow's schema wants for columns that
    may hold missing values (else it warns, once per table, that integers cannot).
    """
    ints = frame.select_dtypes("integer").columns
    logged = frame.astype(dict.fromkeys(ints, "float64")) if len(ints) else frame
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a path
        warnings.filterwarnings("ignore", "The specified dataset source")
        return mlflow.data.from_pandas(logged, source=source, name=name, targets=targets)
