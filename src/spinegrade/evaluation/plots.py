"""Reliability diagrams: one per condition group, every model before and after calibration."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def reliability_figure(group: str, curves: dict[str, dict], eces: dict[str, tuple[float, float]]):
    """Accuracy against confidence per bin; dashed before temperature scaling, solid after.

    Args:
        group: condition group (the title).
        curves: model -> {"raw": table, "calibrated": table} (calibration.reliability_table).
        eces: model -> (ECE raw, ECE calibrated), shown in the legend.
    """
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfectly calibrated")
    for i, (model, tables) in enumerate(curves.items()):
        color = f"C{i}"
        raw, cal = tables["raw"], tables["calibrated"]
        before, after = eces[model]
        ax.plot(raw["confidence"], raw["accuracy"], "--", color=color, alpha=0.6, marker=".")
        ax.plot(
            cal["confidence"],
            cal["accuracy"],
            "-",
            color=color,
            marker="o",
            ms=3,
            label=f"{model}: ECE {before:.3f} -> {after:.3f}",
        )
    ax.set_xlim(0.3, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence (probability of the predicted grade)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{group}: reliability, out of fold (dashed: before temperature scaling)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
