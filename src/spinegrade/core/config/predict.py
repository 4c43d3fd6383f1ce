"""The ``predict`` section: grading the held-out studies end to end."""

from __future__ import annotations

from typing import ClassVar, Literal

from spinegrade.core.config.base import Section


class PredictConfig(Section):
    """predict: grading the held-out test studies end to end.

    Attributes:
        explain: write a Grad-CAM PNG per graded level under the stage's output.
        on_error: ``skip`` a corrupt file (warning names it) or ``raise`` on it.
        review: write the review page (review.html: every study's points, crops,
            Grad-CAMs and probabilities, with the answers when known).
    """

    key: ClassVar[str] = "predict"

    explain: bool = True
    on_error: Literal["raise", "skip"] = "skip"
    review: bool = True
