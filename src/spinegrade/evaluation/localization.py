"""How far the localized points lie from the labelled ones (predict's report)."""

from __future__ import annotations

import pandas as pd

from spinegrade.core import vocab
from spinegrade.models.heatmap import point_error_stats


def summarize_localization(errors: pd.DataFrame) -> dict:
    """Median and 90th percentile point error (mm), and the share of points found on the
    labelled series and slice, overall and per group."""

    def stats(e: pd.DataFrame) -> dict:
        return {"points": len(e), **point_error_stats(e)}

    return {"all": stats(errors), **{g: stats(errors[errors["group"] == g]) for g in vocab.GROUPS}}
