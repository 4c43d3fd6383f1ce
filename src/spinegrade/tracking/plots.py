"""The confusion-matrix figure each training fold's MLflow run logs."""

from __future__ import annotations


def confusion_figure(confusion: list[list[int]], title: str):
    """A matplotlib figure of a 3x3 confusion matrix (rows = true severity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spinegrade.core import vocab

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(confusion, cmap="Blues")
    ticks = range(len(vocab.SEVERITIES))
    ax.set_xticks(ticks, vocab.SEVERITIES, fontsize=8)
    ax.set_yticks(ticks, vocab.SEVERITIES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    peak = max(max(r) for r in confusion) or 1
    for i, row in enumerate(confusion):
        for j, n in enumerate(row):
            ax.text(
                j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black"
            )
    fig.tight_layout()
    return fig
