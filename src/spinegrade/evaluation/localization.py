"""How far the localized points lie from the labelled ones (predict's report)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spinegrade.core import vocab
from spinegrade.models.heatmap import point_error_stats


def localization_errors(found: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    """Per labelled point that was also found: 3D distance in mm between the two."""
    keys = ["study_id", "condition", "level"]
    both = found.merge(labelled, on=keys, suffixes=("", "_true"))
    d = np.linalg.norm(
        both[["wx", "wy", "wz"]].to_numpy(float)
        - both[["wx_true", "wy_true", "wz_true"]].to_numpy(float),
        axis=1,
    )
    return both[keys].assign(
        group=both["condition"].map(vocab.GROUP_OF_CONDITION),
        error_mm=d,
        same_series=both["series_id"] == both["series_id_true"],
        slice_error=np.where(
            both["series_id"] == both["series_id_true"],
            (both["slice"] - both["slice_true"]).abs(),
            -1,
        ),
    )


def summarize_localization(errors: pd.DataFrame) -> dict:
    """Median and 90th percentile point error (mm), and the share of points found on the
    labelled series and slice, overall and per group."""

    def stats(e: pd.DataFrame) -> dict:
        return {"points": len(e), **point_error_stats(e)}

    return {"all": stats(errors), **{g: stats(errors[errors["group"] == g]) for g in vocab.GROUPS}}
