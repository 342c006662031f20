"""Prefect task of the growth step: continue training from the trained checkpoint, splitting units at plateaus."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.checkpoint import load_checkpoint, save_checkpoint
from ensemble.data import PreparedData
from ensemble.growth_rounds import GrowthConfig, grow_rounds
from ensemble.progress import EpochLogs, EpochProgress
from tasks.config import GrowthSection, TrainSection
from tasks.tracking import Tracker, TrackingSettings
from tasks.train import log_member_epochs, train_config


@task(name="grow", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def growth_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    trained: dict,
    growth: GrowthSection,
    train: TrainSection,
    run_dir: str,
) -> dict:
    """Growth rounds on the trained ensemble; logs the round table and the members' curves (epochs continue).

    Returns `trained` with `model_path`/`checkpoint` pointing at the grown model, plus `rounds` (the table).
    """
    logger = get_run_logger()
    prepared = PreparedData.load(data_dir)
    model, optimizer, state = load_checkpoint(trained["checkpoint"])
    # GrowthSection's fields are GrowthConfig's arguments, minus the pipeline-only ones.
    config = GrowthConfig(**growth.model_dump(exclude={"enabled", "epochs_per_round"}), seed=train.seed)
    collected = EpochLogs()
    model, optimizer, rounds = grow_rounds(
        model,
        optimizer,
        prepared,
        train_config(train, epochs=growth.epochs_per_round),
        config,
        callbacks=[collected, EpochProgress(growth.epochs_per_round, logger.info, prefix="growth ")],
        initial_epoch=state["epoch"],
    )
    run_dir = Path(run_dir)
    model.save(run_dir / "grown.keras")
    checkpoint = save_checkpoint(run_dir / "grown-checkpoint", model, optimizer, collected.epochs[-1][0] + 1)
    tracker = Tracker(settings)
    table = [r.as_dict() for r in rounds]
    tracker.log_table(run_id, table, "growth_rounds.json")
    for r in rounds:
        tracker.log_metrics(
            run_id,
            {
                "growth_width": max(r.widths),
                "growth_params": r.params,
                "growth_val_before_split": r.val_before_split,
                "growth_val_after_split": r.val_after_split,
            },
            step=r.round,
        )
    log_member_epochs(tracker, run_id, member_run_ids, collected.epochs)
    for r in rounds:
        logger.info(
            f"round {r.round}: widths {r.widths} -> {r.new_widths}, {r.epochs_trained} epochs, "
            f"val {r.val_before_split:.4f} -> {r.val_after_split}"
        )
    return {
        **trained,
        "model_path": str(run_dir / "grown.keras"),
        "checkpoint": str(checkpoint),
        "rounds": table,
        "hidden_units": list(model.hidden_units),
    }
