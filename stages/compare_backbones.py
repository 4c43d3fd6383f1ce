"""DVC stage compare-backbones: one table and one plot across backbones and groups.

Columns: macro recall, macro F1, the group's rsna term and the backbone's rsna score,
GFLOPs per image (torch flop_counter at the crops' size and channel count, multiply-add =
2 FLOPs), parameters, recall per GFLOP. Writes CSV and Markdown tables, a DVC metric, and
a recall-vs-GFLOPs plot, and logs them all as artifacts of MLflow run "compare-backbones",
next to the pipeline's fold runs listed with mlflow.search_runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow

from spinegrade.core.config import load_params
from spinegrade.core.entry import run, setup_logging, stage_parser
from spinegrade.core.io import atomic_path, write_csv, write_json
from spinegrade.evaluation.compare import comparison_table, recall_gflops_figure, to_markdown
from spinegrade.tracking import store as tracking


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluation", default="reports/evaluate.json", help="evaluate's report")
    parser.add_argument("--models", default="models", help="training outputs: {group}/{backbone}/")
    parser.add_argument("--crops", default="data/crops", help="crops (for run provenance only)")
    parser.add_argument("--folds", default="data/folds.csv", help="folds (for run provenance only)")
    parser.add_argument("--out", default="reports/compare-backbones", help="output path stem")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params)
        cfg = params.train_per_condition
        evaluation = json.loads(Path(args.evaluation).read_text())
        costs = {
            (g, b): json.loads((Path(args.models) / g / b / "metrics.json").read_text())
            for g in cfg.groups
            for b in cfg.backbones
        }
        table = comparison_table(evaluation, costs)
        out = Path(args.out)
        write_csv(out.with_suffix(".csv"), table)
        with atomic_path(out.with_suffix(".md")) as tmp:
            tmp.write_text(to_markdown(table, evaluation["class_prior_baseline"]))
        write_json(
            out.with_suffix(".json"),
            {
                f"{r.group}.{r.backbone}": {k: getattr(r, k) for k in table.columns[2:]}
                for r in table.itertuples()
            },
        )
        fig = recall_gflops_figure(table)
        with atomic_path(out.with_suffix(".png")) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)

        with tracking.child_run(
            params.mlflow.experiment,
            args.params,
            [args.crops, args.folds],
            "compare-backbones",
            "compare",
        ) as active:
            experiment = active.info.experiment_id
            parent = mlflow.get_run(active.info.run_id).data.tags["mlflow.parentRunId"]
            for suffix in (".csv", ".md", ".png"):
                mlflow.log_artifact(str(out.with_suffix(suffix)))
            runs = mlflow.search_runs(
                [experiment],
                filter_string=f"tags.mlflow.parentRunId = '{parent}' "
                "and tags.`spinegrade.role` = 'train'",
            )
            if len(runs):
                mlflow.log_table(
                    runs.drop(columns=["start_time", "end_time"], errors="ignore"), "fold_runs.json"
                )

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
