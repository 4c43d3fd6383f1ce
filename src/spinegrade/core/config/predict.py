"""The ``predict`` section: grading the held-out studies end to end."""

from __future__ import annotations

from typing import ClassVar, Literal

from spinegrade.core.config.intervals import IntervalSettings


class PredictConfig(IntervalSettings):
    """predict: grading the held-out test studies end to end.

    Attributes:
        explain: write a Grad-CAM PNG per graded level under the stage's output.
        on_error: ``skip`` a corrupt file (warning names it) or ``raise`` on it.
        review: write the review page (review.html: every study's points, crops,
            Grad-CAMs and probabilities, with the answers when known).
        bootstrap_resamples, bootstrap_seed, ci_level: the held-out scores' intervals
            (``IntervalSettings``; evaluate's are the out-of-fold ones, so changing those
            does not re-run predict).
        register_model: log the whole study grader (localizers, the chosen graders, the
            class prior, the code) as one MLflow model and register it as
            ``{experiment}-study`` with alias ``champion`` (what ``spinegrade serve
            --model`` and ``mlflow models serve`` load).
    """

    key: ClassVar[str] = "predict"

    explain: bool = True
    on_error: Literal["raise", "skip"] = "skip"
    review: bool = True
    register_model: bool = True
