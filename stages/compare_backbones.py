"""DVC stage compare-backbones: one table and one plot across models and groups.

Per (model, group), the backbones and their ensemble: the group's rsna term (after and
before temperature scaling), calibration error, macro recall, macro F1, the model's rsna
score, each with its study-level bootstrap interval, GFLOPs per image (torch flop_counter
at the crops' size and channel count, multiply-add = 2 FLOPs), parameters, recall per
GFLOP, and a verdict against the group's best model (best / worse / not distinguishable,
by the paired bootstrap). Writes CSV, JSON and Markdown tables, a pairwise CSV, a
recall-vs-GFLOPs plot, the choice per group (--choice: only the model per group, what
predict reads; a cached DVC output, so a fresh clone runs this stage too) and the metrics
summary DVC compares across experiments (--summary: per group the chosen model and its
rsna group term with its interval, per model the rsna score and the mean macro recall,
and the MLflow parent run's id). MLflow run "compare-backbones" holds the tables and the
plot as artifacts, and the pipeline's fold runs as table fold_runs.json. In MLflow too:
one run per table row in experiment "{experiment}-comparison" (the view `make ui` opens),
and each group's best model registered as "{experiment}-{group}" with alias "champion"
(tracking.registry).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from spinegrade.core.config.base import load_sections
from spinegrade.core.config.mlflow import MlflowConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.entry import run, setup_logging, stage_parser, summary
from spinegrade.core.io import atomic_path, write_csv, write_json
from spinegrade.evaluation.compare import (
    chosen_models,
    comparison_metrics,
    comparison_table,
    headline,
    paired_table,
    recall_gflops_figure,
    to_markdown,
)
from spinegrade.tracking.comparison import log_compare_backbones
from spinegrade.tracking.store import log_headline

# The params sections this stage reads (dvc.yaml declares the same).
SECTIONS = (TrainPerConditionConfig, MlflowConfig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluation", default="reports/evaluate.json", help="evaluate's report")
    parser.add_argument(
        "--evaluated", default="data/evaluate", help="evaluate's output (the ensemble's OOF tables)"
    )
    parser.add_argument("--models", default="models", help="training outputs: {group}/{backbone}/")
    parser.add_argument("--crops", default="data/crops", help="crops (for run provenance only)")
    parser.add_argument("--folds", default="data/folds.csv", help="folds (for run provenance only)")
    parser.add_argument("--out", default="reports/compare-backbones", help="output path stem")
    parser.add_argument(
        "--choice",
        default="data/compare-backbones/choice.json",
        help="the model chosen per group, what predict reads (a cached DVC output)",
    )
    parser.add_argument(
        "--summary",
        default="reports/metrics/comparison.json",
        help="the headline numbers (the DVC metric)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_sections(args.params, *SECTIONS)
        cfg = params.train_per_condition
        evaluation = json.loads(Path(args.evaluation).read_text())
        costs = {
            (g, b): json.loads((Path(args.models) / g / b / "metrics.json").read_text())
            for g in cfg.groups
            for b in cfg.backbones
        }
        table = comparison_table(evaluation, costs)
        choice = chosen_models(table)
        out = Path(args.out)
        csv, md, png = (out.with_suffix(s) for s in (".csv", ".md", ".png"))
        pairs = out.with_name(out.name + "-paired.csv")
        write_csv(csv, table)
        write_csv(pairs, paired_table(evaluation))
        with atomic_path(md) as tmp:
            tmp.write_text(to_markdown(table, evaluation))
        write_json(out.with_suffix(".json"), comparison_metrics(table))
        write_json(args.choice, choice)
        fig = recall_gflops_figure(table)
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        parent = log_compare_backbones(
            params.mlflow.experiment,
            args.params,
            [args.crops, args.folds],
            table,
            choice,
            [csv, md, png, pairs],
            args.models,
            args.evaluated,
            cfg,
        )
        numbers = headline(table, parent)
        write_json(args.summary, numbers)
        log_headline(parent, numbers)
        chosen = ", ".join(f"{g} {m}" for g, m in choice.items())
        summary(f"chosen per group: {chosen} (registered @champion)", md, png, args.summary)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
