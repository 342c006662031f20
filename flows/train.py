"""The `train` flow: data prep -> fused training -> snapshots -> growth rounds -> evaluation -> registration.

One MLflow parent run per flow run; the flow opens it, passes its id to every task and closes it FINISHED, or
FAILED if any step raised (a failed run never registers a model).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.config import PipelineConfig
from tasks.data import log_data_task, prepare_data_task
from tasks.evaluate import evaluate_task
from tasks.growth import growth_task
from tasks.registry import register_task
from tasks.snapshots import collect_snapshots_task
from tasks.tracking import Tracker, TrackingSettings
from tasks.train import start_member_runs_task, train_task


@flow(name="train-ensemble", log_prints=True)
def train_flow(config: PipelineConfig = PipelineConfig(), tracking: TrackingSettings | None = None) -> dict:
    """Train, evaluate and register one ensemble. Returns run id, metrics and the registered version."""
    logger = get_run_logger()
    settings = tracking or TrackingSettings.load()
    tracker = Tracker(settings)
    run_id = tracker.start_run(
        config.run_name or f"ensemble-{flow_run.get_name() or 'local'}",
        tags={"kind": "ensemble", "pipeline": "train", "prefect.flow_run_id": str(flow_run.get_id())},
    )
    member_run_ids: list[str] = []
    try:
        tracker.log_params(run_id, config.model_dump(exclude={"run_name"}))
        data_dir = prepare_data_task(config.data, config.output_dir)
        log_data_task(settings, run_id, data_dir, config.data.source)
        run_dir = str(Path(config.output_dir).resolve() / "runs" / run_id)
        member_run_ids = start_member_runs_task(settings, run_id, config.model, config.train)
        trained = train_task(
            settings,
            run_id,
            member_run_ids,
            data_dir,
            config.model,
            config.optimizer,
            config.train,
            config.snapshots,
            run_dir,
        )
        snapshot_group = None
        if config.snapshots.enabled:
            snapshot_group = collect_snapshots_task(
                settings, run_id, member_run_ids, data_dir, trained, config.snapshots, run_dir
            )
        if config.growth.enabled:
            trained = growth_task(
                settings, run_id, member_run_ids, data_dir, trained, config.growth, config.train, run_dir
            )
        # The last cycle's snapshot IS the trained model: count it once, unless growth changed the model since.
        groups = [trained["model_path"]] if config.growth.enabled or snapshot_group is None else []
        groups += [snapshot_group] if snapshot_group else []
        evaluation = evaluate_task(
            settings, run_id, member_run_ids, data_dir, groups, config.evaluation, run_dir
        )
        registration = None
        if config.registry.enabled:
            registration = register_task(
                settings,
                run_id,
                data_dir,
                evaluation["predictor_dir"],
                evaluation["metric"],
                evaluation["value"],
                evaluation["higher_is_better"],
                config.registry.model_name,
            )
    except BaseException:
        for member_run in member_run_ids:
            tracker.finish_run(member_run, "FAILED")
        tracker.finish_run(run_id, "FAILED")
        raise
    for member_run in member_run_ids:
        tracker.finish_run(member_run)
    tracker.finish_run(run_id)
    logger.info(f"MLflow run {run_id}: {tracker.run_url(run_id)}")
    return {
        "run_id": run_id,
        "metrics": evaluation["metrics"],
        "registration": registration,
        "predictor_dir": evaluation["predictor_dir"],
        "member_run_ids": member_run_ids,
    }
