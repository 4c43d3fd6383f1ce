"""compare-backbones: one table of recall, F1, official score and cost per backbone and group.

GFLOPs are counted by torch.utils.flop_counter at the crops' real size and channel count
(a multiply-add is 2 FLOPs) for one image; "recall per GFLOP" is macro recall / GFLOPs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLUMNS = (
    "backbone",
    "group",
    "macro_recall",
    "macro_f1",
    "rsna_group_term",
    "rsna_score",
    "gflops",
    "params_m",
    "recall_per_gflop",
)


def comparison_table(evaluation: dict, model_metrics: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """Rows per (backbone, group) from evaluate's report and each model's metrics.json.

    ``rsna_group_term`` is the group's term of the official score; ``rsna_score`` is the
    backbone's full score (all groups and any-severe), repeated on its rows.
    """
    rows = []
    for backbone, entry in evaluation["backbones"].items():
        for group, m in entry["groups"].items():
            cost = model_metrics[(group, backbone)]
            rows.append(
                {
                    "backbone": backbone,
                    "group": group,
                    "macro_recall": m["macro_recall"],
                    "macro_f1": m["macro_f1"],
                    "rsna_group_term": entry["rsna"].get(group, float("nan")),
                    "rsna_score": entry["rsna"]["score"],
                    "gflops": cost["gflops"],
                    "params_m": cost["params"] / 1e6,
                    "recall_per_gflop": m["macro_recall"] / cost["gflops"],
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame, baseline: dict | None = None) -> str:
    """The table as Markdown with units in the header (and the class-prior baseline)."""
    shown = table.rename(
        columns={
            "macro_recall": "macro recall",
            "macro_f1": "macro F1",
            "rsna_group_term": "rsna group term (lower is better)",
            "rsna_score": "rsna score, all groups (lower is better)",
            "gflops": "GFLOPs / image (multiply-add = 2)",
            "params_m": "params (M)",
            "recall_per_gflop": "recall per GFLOP",
        }
    )
    text = shown.to_markdown(index=False, floatfmt=".3f") + "\n"
    if baseline:
        terms = ", ".join(f"{k} {v:.3f}" for k, v in baseline.items() if k != "score")
        text += (
            f"\nClass-prior baseline on the same studies: rsna score {baseline['score']:.3f}"
            f" ({terms}).\n"
        )
    return text


def recall_gflops_figure(table: pd.DataFrame):
    """Scatter of macro recall against GFLOPs, one marker per group, labelled by backbone."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for group, part in table.groupby("group", sort=False):
        ax.scatter(part["gflops"], part["macro_recall"], label=group, s=40)
        for r in part.itertuples():
            ax.annotate(
                r.backbone,
                (r.gflops, r.macro_recall),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set_xlabel("GFLOPs per image (torch flop_counter, multiply-add = 2)")
    ax.set_ylabel("macro recall (out of fold)")
    ax.set_ylim(0, 1.02)
    ax.legend(title="group", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
