"""The `compare` flow: the configured ensemble vs a single member-sized model vs a single large model of equal
FLOPs (each its own MLflow run, tagged `comparison=<parent run id>`), optionally the full widths x members grid."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.train import prefect_tags, running_flow_config
from tasks.compare import (
    candidate_task,
    grid_task,
    plan_candidates_task,
    plot_comparison_task,
    summarize_comparison_task,
)
from tasks.config import PipelineConfig
from tasks.data import log_data_task, prepare_data_task
from tasks.describe import compare_title
from tasks.tracking import Tracker, TrackingSettings


def flow_run_title() -> str:
    """The flow run's name: the config's `run_name`, else `compare <data> <members>x<units>`."""
    config = running_flow_config()
    return config.run_name or compare_title(config)


@flow(name="compare-ensembles", flow_run_name=flow_run_title, log_prints=True)
def compare_flow(
    config: PipelineConfig = PipelineConfig(),
    tracking: TrackingSettings | None = None,
    grid: dict | None = None,
) -> dict:
    """Train the candidates on the same prepared data, log each as a child run, plot accuracy vs FLOPs.

    Args:
        config: the pipeline config; `model` defines the ensemble, `train`/`optimizer` how every candidate trains.
        tracking: MLflow settings (default: `mlflow.yaml` + environment).
        grid: `ensemble.evaluation.compare.CompareConfig` fields to also run the widths x members grid (None: skip).
    """
    logger = get_run_logger()
    settings = tracking or TrackingSettings.load()
    tracker = Tracker(settings)
    title = config.run_name or compare_title(config)
    tags = {"kind": "comparison", "pipeline": "compare", **prefect_tags()}
    with tracker.run(tracker.start_run(title, tags=tags)) as run_id:
        tracker.log_params(run_id, config.model_dump(exclude={"run_name", "snapshots", "growth", "registry"}))
        data_dir = prepare_data_task(config.data, config.output_dir)
        log_data_task(settings, run_id, data_dir, config.data.source)
        run_dir = str(Path(config.output_dir).resolve() / "runs" / run_id)
        rows = [
            candidate_task(
                settings,
                run_id,
                data_dir,
                candidate,
                config.model,
                config.optimizer,
                config.train,
                config.evaluation,
            )
            for candidate in plan_candidates_task(data_dir, config.model)
        ]
        scoring = {"combiner": config.evaluation.combiner, "bins": config.evaluation.bins}  # as candidates
        plotted = rows + (
            grid_task(settings, run_id, data_dir, scoring | grid, run_dir) if grid is not None else []
        )
        plot_comparison_task(settings, run_id, plotted, run_dir)
        summary = summarize_comparison_task(settings, run_id, rows, run_dir)
        publish_comparison(rows, summary, f"MLflow run: [{title}]({tracker.run_url(run_id)})")
    metric = summary["metric"]
    for row in rows:
        logger.info(
            f"{row['kind']:>18}  members {row['members']:>3}  width {row['width']:>4}  "
            f"flops {row['flops']:>9}  {metric} {row[metric]:.4f}"
        )
    logger.info(summary["verdict"])
    return {"run_id": run_id, "rows": rows, "verdict": summary["verdict"]}


def publish_comparison(rows: list[dict], summary: dict, link: str) -> None:
    """The flow run's `comparison` table and `run-summary` (verdict, table, `link` to the MLflow run) artifacts."""
    create_table_artifact(
        table=[{k: r.get(k) for k in ("kind", "members", "width", "flops", summary["metric"])} for r in rows],
        key="comparison",
        description="Ensemble vs single models (test split)",
    )
    create_markdown_artifact(
        markdown=f"{summary['markdown']}\n\n{link}",
        key="run-summary",
        description=summary["verdict"],
    )
