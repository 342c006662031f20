"""The `compare` flow: the configured ensemble vs a single member-sized model vs a single large model of equal
FLOPs (each its own MLflow run, tagged `comparison=<parent run id>`), optionally the full widths x members grid."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks.compare import candidate_task, grid_task, plan_candidates_task, plot_comparison_task
from tasks.config import PipelineConfig
from tasks.data import log_data_task, prepare_data_task
from tasks.tracking import Tracker, TrackingSettings


@flow(name="compare-ensembles", log_prints=True)
def compare_flow(
    config: PipelineConfig = PipelineConfig(),
    tracking: TrackingSettings | None = None,
    grid: dict | None = None,
) -> dict:
    """Train the candidates on the same prepared data, log each as a child run, plot accuracy vs FLOPs.

    Args:
        config: the pipeline config; `model` defines the ensemble, `train`/`optimizer` how every candidate trains.
        tracking: MLflow settings (default: `mlflow.yaml` + environment).
        grid: `ensemble.compare.CompareConfig` fields to also run the widths x members grid (None: skip).
    """
    logger = get_run_logger()
    settings = tracking or TrackingSettings.load()
    tracker = Tracker(settings)
    run_id = tracker.start_run(
        config.run_name or f"compare-{flow_run.get_name() or 'local'}",
        tags={"kind": "comparison", "pipeline": "compare"},
    )
    try:
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
        plotted = rows + (grid_task(settings, run_id, data_dir, grid, run_dir) if grid else [])
        plot_comparison_task(settings, run_id, plotted, run_dir)
        create_table_artifact(
            table=[
                {k: r[k] for k in ("kind", "members", "width", "flops", "accuracy", "nll", "ece")}
                for r in rows
            ],
            key="comparison",
            description="Ensemble vs single models (test split)",
        )
    except BaseException:
        tracker.finish_run(run_id, "FAILED")
        raise
    tracker.finish_run(run_id)
    for row in rows:
        logger.info(
            f"{row['kind']:>18}  members {row['members']:>3}  width {row['width']:>4}  "
            f"flops {row['flops']:>9}  accuracy {row['accuracy']:.4f}  nll {row['nll']:.4f}"
        )
    return {"run_id": run_id, "rows": rows}
