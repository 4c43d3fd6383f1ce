"""compare-backbones: one table of recall, F1, official score and cost per model and group,
with study-level bootstrap intervals, and a verdict on what the studies can rank.

GFLOPs are counted by torch.utils.flop_counter at the crops' real size and channel count
(a multiply-add is 2 FLOPs) for one image; "recall per GFLOP" is macro recall / GFLOPs. The
ensemble costs the sum of its backbones.

Ranking: per group, the model with the lowest (calibrated) rsna group term is "best"; every
other model is "worse" only when the paired bootstrap interval of its difference to the
best excludes zero, else "not distinguishable" from it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from spinegrade.core import vocab  # noqa: E402

COLUMNS = (
    "model",
    "group",
    "verdict",
    "rsna_group_term",
    "rsna_group_term_low",
    "rsna_group_term_high",
    "rsna_group_term_raw",
    "ece",
    "ece_raw",
    "macro_recall",
    "macro_recall_low",
    "macro_recall_high",
    "macro_f1",
    "macro_f1_low",
    "macro_f1_high",
    "rsna_score",
    "rsna_score_low",
    "rsna_score_high",
    "gflops",
    "params_m",
    "recall_per_gflop",
)
PAIRED_COLUMNS = (
    "group",
    "pair",
    "rsna_term_diff",
    "rsna_term_diff_low",
    "rsna_term_diff_high",
    "rsna_term_distinguishable",
    "macro_recall_diff",
    "macro_recall_diff_low",
    "macro_recall_diff_high",
    "macro_recall_distinguishable",
)
BEST, WORSE, TIED = "best", "worse", "not distinguishable"


def _pair(paired: dict, group: str, a: str, b: str) -> dict:
    """The paired entry of ``a - b`` in evaluate's report (stored under one order)."""
    pairs = paired[group]
    if f"{a}-vs-{b}" in pairs:
        return pairs[f"{a}-vs-{b}"]
    flipped = pairs[f"{b}-vs-{a}"]
    return {
        stat: {**d, "estimate": -d["estimate"], "low": -d["high"], "high": -d["low"]}
        for stat, d in flipped.items()
    }


def comparison_table(evaluation: dict, model_metrics: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """Rows per (model, group) from evaluate's report and each backbone's metrics.json,
    groups in report order and models best first.

    ``rsna_group_term`` is the group's term of the official score after temperature scaling
    (``_raw``: before); ``rsna_score`` is the model's full score, repeated on its rows.
    ``_low``/``_high`` bound the bootstrap interval.
    """
    models = evaluation["models"]
    backbones = [m for m in models if m != vocab.ENSEMBLE]
    rows = []
    for model, entry in models.items():
        parts = backbones if model == vocab.ENSEMBLE else [model]
        for group, m in entry["groups"].items():
            gflops = sum(model_metrics[(group, b)]["gflops"] for b in parts)
            params = sum(model_metrics[(group, b)]["params"] for b in parts)
            ci, score_ci = m["ci"], entry["rsna_ci"]["score"]
            rows.append(
                {
                    "model": model,
                    "group": group,
                    "rsna_group_term": entry["rsna"][group],
                    "rsna_group_term_low": ci["rsna_term"]["low"],
                    "rsna_group_term_high": ci["rsna_term"]["high"],
                    "rsna_group_term_raw": m["rsna_term_raw"],
                    "ece": m["ece"],
                    "ece_raw": m["ece_raw"],
                    "macro_recall": m["macro_recall"],
                    "macro_recall_low": ci["macro_recall"]["low"],
                    "macro_recall_high": ci["macro_recall"]["high"],
                    "macro_f1": m["macro_f1"],
                    "macro_f1_low": ci["macro_f1"]["low"],
                    "macro_f1_high": ci["macro_f1"]["high"],
                    "rsna_score": entry["rsna"]["score"],
                    "rsna_score_low": score_ci["low"],
                    "rsna_score_high": score_ci["high"],
                    "gflops": gflops,
                    "params_m": params / 1e6,
                    "recall_per_gflop": m["macro_recall"] / gflops,
                }
            )
    table = pd.DataFrame(rows)
    order = {g: i for i, g in enumerate(dict.fromkeys(table["group"]))}
    table = table.sort_values(
        ["group", "rsna_group_term", "model"],
        key=lambda c: c.map(order) if c.name == "group" else c,
    ).reset_index(drop=True)
    verdicts = []
    for r in table.itertuples():
        best = table.loc[table["group"] == r.group, "model"].iloc[0]
        if r.model == best:
            verdicts.append(BEST)
        else:
            diff = _pair(evaluation["paired"], r.group, r.model, best)["rsna_term"]
            verdicts.append(WORSE if diff["distinguishable"] else TIED)
    table["verdict"] = verdicts
    return table[list(COLUMNS)]


def display_order(table: pd.DataFrame) -> pd.DataFrame:
    """The table's rows as the comparison experiment lists them: the backbones' rows group by
    group (best first, as in the table), then the ensemble's. The MLflow UI's chart view draws
    the first 10 runs until told otherwise: with three groups and three backbones, those are
    the nine backbone rows and one ensemble."""
    ensemble = table["model"] == vocab.ENSEMBLE
    return pd.concat([table[~ensemble], table[ensemble]], ignore_index=True)


def paired_table(evaluation: dict) -> pd.DataFrame:
    """Every pair of models per group: the difference in rsna group term and in macro
    recall (first minus second) with its paired interval, and whether it excludes zero."""
    rows = []
    for group, pairs in evaluation["paired"].items():
        for name, stats in pairs.items():
            a, b = name.split("-vs-")
            term, recall = stats["rsna_term"], stats["macro_recall"]
            rows.append(
                {
                    "group": group,
                    "pair": f"{a} - {b}",
                    "rsna_term_diff": term["estimate"],
                    "rsna_term_diff_low": term["low"],
                    "rsna_term_diff_high": term["high"],
                    "rsna_term_distinguishable": term["distinguishable"],
                    "macro_recall_diff": recall["estimate"],
                    "macro_recall_diff_low": recall["low"],
                    "macro_recall_diff_high": recall["high"],
                    "macro_recall_distinguishable": recall["distinguishable"],
                }
            )
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def comparison_metrics(table: pd.DataFrame) -> dict[str, dict]:
    """The table as JSON (reports/compare-backbones.json): ``{group}.{model}`` -> the row's
    verdict and numbers (every column after model and group)."""
    return {
        f"{r.group}.{r.model}": {k: getattr(r, k) for k in table.columns[2:]}
        for r in table.itertuples()
    }


def headline(table: pd.DataFrame, mlflow_parent_run: str) -> dict:
    """The comparison's metrics summary, what DVC compares across experiments
    (reports/metrics/comparison.json; the table itself is an output, not a metric).

    ``groups``: per group, the chosen model (its verdict is ``best``) and its rsna group
    term with the term's interval (``_low``, ``_high``). ``models``: per model (each
    backbone and the ensemble), its rsna score over all groups and ``mean_macro_recall``,
    its macro recall averaged over the groups (the table has one per group).
    ``mlflow_parent_run``: the id of this pipeline run's MLflow parent run. Numbers: 3 per
    group and 2 per model (17 for three groups and three backbones).
    """
    groups = {
        r.group: {
            "model": r.model,
            "rsna_group_term": float(r.rsna_group_term),
            "rsna_group_term_low": float(r.rsna_group_term_low),
            "rsna_group_term_high": float(r.rsna_group_term_high),
        }
        for r in table[table["verdict"] == BEST].itertuples()
    }
    models = {
        model: {
            "rsna_score": float(rows["rsna_score"].iloc[0]),
            "mean_macro_recall": float(rows["macro_recall"].mean()),
        }
        for model, rows in table.groupby("model", sort=True)
    }
    return {"groups": groups, "models": models, "mlflow_parent_run": mlflow_parent_run}


def chosen_models(table: pd.DataFrame) -> dict[str, str]:
    """Group -> the model its verdict ranks best: the choice predict grades with and the
    Model Registry holds, groups in table order. Only the model (its numbers are in the
    table and the metrics summary): a change that moves them but not the choice leaves
    this file, and so predict, as it was."""
    best = table[table["verdict"] == BEST]
    return {r.group: r.model for r in best.itertuples()}


def _ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def to_markdown(table: pd.DataFrame, evaluation: dict) -> str:
    """The tables as Markdown: intervals in brackets, units in the headers, the verdicts,
    the pairwise differences, and the class-prior baseline."""
    boot = evaluation["bootstrap"]
    level = f"{boot['level']:.0%}"
    shown = pd.DataFrame(
        {
            "group": table["group"],
            "model": table["model"],
            "verdict": table["verdict"],
            f"rsna group term [{level} CI] (lower is better)": [
                _ci(r.rsna_group_term, r.rsna_group_term_low, r.rsna_group_term_high)
                for r in table.itertuples()
            ],
            "before calibration": table["rsna_group_term_raw"].map("{:.3f}".format),
            "ECE before -> after": [f"{r.ece_raw:.3f} -> {r.ece:.3f}" for r in table.itertuples()],
            f"macro recall [{level} CI]": [
                _ci(r.macro_recall, r.macro_recall_low, r.macro_recall_high)
                for r in table.itertuples()
            ],
            f"macro F1 [{level} CI]": [
                _ci(r.macro_f1, r.macro_f1_low, r.macro_f1_high) for r in table.itertuples()
            ],
            "rsna score, all groups": [
                _ci(r.rsna_score, r.rsna_score_low, r.rsna_score_high) for r in table.itertuples()
            ],
            "GFLOPs / image": table["gflops"].map("{:.3f}".format),
            "params (M)": table["params_m"].map("{:.1f}".format),
            "recall per GFLOP": table["recall_per_gflop"].map("{:.2f}".format),
        }
    )
    text = shown.to_markdown(index=False) + "\n"
    text += (
        f"\nOut of fold on {evaluation['studies']} studies (folds {evaluation['folds']}), "
        f"none of which chose an epoch or a temperature; intervals from {boot['resamples']} "
        f"study-level bootstrap resamples (seed {boot['seed']}). Verdict: per group, a model "
        f"is 'worse' than the best only when the paired interval of its rsna-term difference "
        f"excludes zero. GFLOPs per image by torch flop_counter (multiply-add = 2); the "
        f"ensemble costs the sum of its backbones.\n"
    )
    pairs = paired_table(evaluation)
    if len(pairs):
        diff = pd.DataFrame(
            {
                "group": pairs["group"],
                "pair (a - b)": pairs["pair"],
                f"rsna term difference [{level} CI]": [
                    _ci(r.rsna_term_diff, r.rsna_term_diff_low, r.rsna_term_diff_high)
                    for r in pairs.itertuples()
                ],
                "differs": pairs["rsna_term_distinguishable"].map({True: "yes", False: "no"}),
                f"macro recall difference [{level} CI]": [
                    _ci(r.macro_recall_diff, r.macro_recall_diff_low, r.macro_recall_diff_high)
                    for r in pairs.itertuples()
                ],
                "differs ": pairs["macro_recall_distinguishable"].map({True: "yes", False: "no"}),
            }
        )
        text += "\nPaired differences (the same bootstrap resamples for both models):\n\n"
        text += diff.to_markdown(index=False) + "\n"
    baseline = evaluation["class_prior_baseline"]
    terms = ", ".join(f"{k} {v:.3f}" for k, v in baseline.items() if k != "score")
    text += (
        f"\nClass-prior baseline on the same studies (each fold's prior from its training "
        f"studies): rsna score {baseline['score']:.3f} ({terms}).\n"
    )
    return text


def recall_gflops_figure(table: pd.DataFrame):
    """Macro recall against GFLOPs with its interval, one colour per group, by model."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (group, part) in enumerate(table.groupby("group", sort=False)):
        err = [part["macro_recall"] - part["macro_recall_low"],
               part["macro_recall_high"] - part["macro_recall"]]  # fmt: skip
        ax.errorbar(
            part["gflops"], part["macro_recall"], yerr=err, fmt="o", ms=5, capsize=3,
            color=f"C{i}", label=group,
        )  # fmt: skip
        for r in part.itertuples():
            ax.annotate(
                r.model,
                (r.gflops, r.macro_recall),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (torch flop_counter, multiply-add = 2; log scale)")
    ax.set_ylabel("macro recall, out of fold (95% bootstrap CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(title="group", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
