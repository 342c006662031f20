"""Prefect tasks of the training step: open one MLflow run per member, train the fused ensemble (resumable), log.

Per member (nested run): params member/seed/width/bootstrap; metrics per epoch (`step` = epoch): train loss and
accuracy, val loss and accuracy. Parent run: the learning rate of every optimiser step (`lr`, `step` = global step)
and its PNG, the mean/ensemble curves per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.checkpoint import EpochCheckpoint, has_checkpoint, load_checkpoint
from ensemble.data import PreparedData
from ensemble.fused import FusedMLP
from ensemble.plots import plot_learning_rate
from ensemble.progress import EpochLogs, EpochProgress
from ensemble.schedules import SGDRSchedule
from ensemble.snapshots import SnapshotCollector
from ensemble.train import TrainConfig, fit, schedule_cycle_ends
from tasks.config import ModelSection, OptimizerSection, SnapshotSection, TrainSection
from tasks.tracking import Tracker, TrackingSettings

MEMBER_METRICS = {  # history key -> MLflow metric name (per member run)
    "member_loss": "train_loss",
    "member_accuracy": "train_accuracy",
    "member_val_loss": "val_loss",
    "member_val_accuracy": "val_accuracy",
}
PARENT_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_ensemble_accuracy")


@task(name="start-member-runs", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def start_member_runs_task(
    settings: TrackingSettings, parent_run_id: str, model: ModelSection, train: TrainSection
) -> list[str]:
    """One nested MLflow run per member, opened before training so a retried training task reuses them."""
    tracker = Tracker(settings)
    run_ids = []
    for n in range(model.members):
        run_id = tracker.start_run(
            f"member-{n}", tags={"kind": "member", "member": str(n)}, parent_run_id=parent_run_id
        )
        tracker.log_params(
            run_id,
            {
                "member": n,
                "seed": model.seed + n,
                "hidden_units": model.hidden_units,
                "width": max(model.hidden_units, default=0),
                "bootstrap": train.bagging,
                "data_seed": train.seed,
            },
        )
        run_ids.append(run_id)
    return run_ids


def build_optimizer(
    section: OptimizerSection, snapshots: SnapshotSection | None, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    """The Keras optimiser; with snapshots on, its learning rate is the SGDR schedule (cycle_length in epochs)."""
    learning_rate = section.learning_rate
    if snapshots is not None and snapshots.enabled:
        learning_rate = sgdr_schedule(snapshots, steps_per_epoch)
    if section.name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=section.momentum, nesterov=section.nesterov)


def sgdr_schedule(snapshots: SnapshotSection, steps_per_epoch: int) -> SGDRSchedule:
    return SGDRSchedule.from_epochs(
        snapshots.cycle_length,
        steps_per_epoch,
        cycle_length_multiplier=snapshots.cycle_length_multiplier,
        lr_init=snapshots.lr_init,
        lr_min=snapshots.lr_min,
        lr_multiplier=snapshots.lr_multiplier,
    )


def train_config(section: TrainSection, **changes) -> TrainConfig:
    return TrainConfig(**{**section.model_dump(), **changes})


@task(name="train-fused", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def train_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    model: ModelSection,
    optimizer: OptimizerSection,
    train: TrainSection,
    snapshots: SnapshotSection,
    run_dir: str,
) -> dict:
    """Train all members as one fused model; resumes from `run_dir/checkpoint` when a previous attempt died.

    Returns `{"model_path", "checkpoint", "history_path", "snapshot_dir", "epochs", "steps"}`.
    """
    logger = get_run_logger()
    run_dir = Path(run_dir)
    prepared = PreparedData.load(data_dir)
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    checkpoint = run_dir / "checkpoint"
    if has_checkpoint(checkpoint):
        fused, opt, state = load_checkpoint(checkpoint)
        initial_epoch = state["epoch"]
        logger.info(f"Resuming from {checkpoint} after epoch {initial_epoch}")
    else:
        fused = FusedMLP(
            model.members,
            prepared.num_features,
            model.hidden_units,
            task=prepared.task,
            num_classes=max(prepared.num_classes, 2),
            activation=model.activation,
            seed=model.seed,
        )
        opt = build_optimizer(optimizer, snapshots, steps_per_epoch)
        initial_epoch = 0
    if snapshots.enabled:  # a run that stops mid-cycle would lose its last snapshot: reject it up front
        sgdr_schedule(snapshots, steps_per_epoch).check_whole_cycles(
            train.epochs * steps_per_epoch, steps_per_epoch
        )
    collector = None
    if snapshots.enabled:
        collector = SnapshotCollector(
            skip_first=snapshots.skip_first,
            keep_best=snapshots.keep_best,
            validation_data=(prepared.x_val, prepared.y_val),
            monitor="val_loss",
        )
    collected = EpochLogs()
    callbacks = [collected, EpochCheckpoint(checkpoint, opt), EpochProgress(train.epochs, logger.info)]
    history = fit(
        fused,
        prepared.x_train,
        prepared.y_train,
        optimizer=opt,
        config=train_config(train),
        validation_data=(prepared.x_val, prepared.y_val),
        initial_epoch=initial_epoch,
        callbacks=[*callbacks, *([collector] if collector else [])],
    )
    fused.save(run_dir / "model.keras")
    if collector is not None:
        collector.snapshots.save(run_dir / "snapshots")
    history_path = save_history(
        collected.epochs, history.learning_rates, history.steps, run_dir / "history.json"
    )
    tracker = Tracker(settings)
    log_member_epochs(tracker, run_id, member_run_ids, collected.epochs)
    log_learning_rate(
        tracker,
        run_id,
        history.steps,
        history.learning_rates,
        schedule_cycle_ends(opt, int(opt.iterations)),
        run_dir / "learning_rate.png",
    )
    return {
        "model_path": str(run_dir / "model.keras"),
        "checkpoint": str(checkpoint),
        "history_path": str(history_path),
        "snapshot_dir": str(run_dir / "snapshots") if collector else None,
        "epochs": train.epochs,
        "steps": int(opt.iterations),
    }


def save_history(epochs: list[tuple[int, dict]], lrs: list[float], steps: list[int], path: Path) -> Path:
    """Per-epoch logs (arrays as lists) and the per-step learning rate, as JSON."""
    rows = [
        {"epoch": e, **{k: np.asarray(v).tolist() for k, v in logs.items() if k != "unit_gradients"}}
        for e, logs in epochs
    ]
    path.write_text(json.dumps({"epochs": rows, "lr": lrs, "steps": steps}))
    return path


def log_member_epochs(
    tracker: Tracker, run_id: str, member_run_ids: list[str], epochs: list[tuple[int, dict]]
) -> None:
    """Per-member epoch curves into the member runs, the mean/ensemble curves into the parent (`step` = epoch)."""
    now = get_current_time_millis()
    for n, member_run in enumerate(member_run_ids):
        batch = [
            Metric(name, float(logs[key][n]), now, epoch)
            for epoch, logs in epochs
            for key, name in MEMBER_METRICS.items()
            if key in logs
        ]
        tracker.log_metric_batch(member_run, batch)
    parent = [
        Metric(key, float(logs[key]), now, epoch)
        for epoch, logs in epochs
        for key in PARENT_METRICS
        if key in logs
    ]
    tracker.log_metric_batch(run_id, parent)


def log_learning_rate(
    tracker: Tracker, run_id: str, steps: list[int], lrs: list[float], cycle_ends: list[int], png_path: Path
) -> None:
    """The learning rate of every optimiser step as used (`lr`, `step` = global step) and its plot."""
    tracker.log_series(run_id, "lr", lrs, steps)
    png = plot_learning_rate(
        steps, lrs, [e for e in cycle_ends if steps and steps[0] <= e <= steps[-1]], png_path
    )
    tracker.log_artifact(run_id, png, "plots")
