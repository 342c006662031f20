"""Prefect tasks of the training step: open one MLflow run per member, train the fused ensemble (resumable), log.

Per member (nested run): params member/seed/width/bootstrap; metrics per epoch (`step` = epoch): train loss and
accuracy, val loss and accuracy. Parent run: the learning rate of every optimiser step (`lr`, `step` = global step)
and its PNG, the mean/ensemble curves per epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import keras
import numpy as np
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.checkpoint import EpochCheckpoint, has_checkpoint, load_checkpoint, read_record
from ensemble.data import PreparedData
from ensemble.fused import FusedMLP
from ensemble.plots import plot_learning_rate
from ensemble.progress import EpochProgress
from ensemble.schedules import SGDRSchedule
from ensemble.shards import merge_checkpoints
from ensemble.snapshots import SnapshotCollector, Snapshots
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


# Seed 002's parameter names, shared by `SnapshotSection` and `SGDRSchedule.from_epochs`.
SGDR_FIELDS = {"cycle_length", "cycle_length_multiplier", "lr_init", "lr_min", "lr_multiplier"}


def sgdr_schedule(snapshots: SnapshotSection, steps_per_epoch: int) -> SGDRSchedule:
    """The SGDR schedule of the snapshot section (`cycle_length` in epochs)."""
    return SGDRSchedule.from_epochs(
        steps_per_epoch=steps_per_epoch, **snapshots.model_dump(include=SGDR_FIELDS)
    )


PIPELINE_ONLY = ("members_per_shard", "mixed_precision")  # TrainSection fields that are not TrainConfig's
FAULT_AFTER_EPOCH_ENV = "ENSEMBLE_FAULT_AFTER_EPOCH"


def train_config(section: TrainSection, **changes) -> TrainConfig:
    return TrainConfig(**{**section.model_dump(exclude=set(PIPELINE_ONLY)), **changes})


class InjectedFault(RuntimeError):
    """Raised by `FaultAfterEpoch`: a simulated crash."""


class FaultAfterEpoch(keras.callbacks.Callback):
    """Testing hook: raises right after the checkpoint of epoch `after` (count of completed epochs) is written.

    `train_task` adds it when `$ENSEMBLE_FAULT_AFTER_EPOCH` holds a number, to exercise the crash -> retry ->
    resume path with real Prefect retries. It fires once per run: the retried attempt resumes after that epoch.
    Never set the variable outside tests.
    """

    def __init__(self, after: int):
        super().__init__()
        self.after = int(after)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            raise InjectedFault(
                f"{FAULT_AFTER_EPOCH_ENV}={self.after}: simulated crash after epoch {self.after}"
            )


@contextlib.contextmanager
def dtype_policy(name: str | None):
    """Build (or load) Keras layers under the dtype policy `name` (None: unchanged); restored on exit.

    Keras keeps the policy per thread, so concurrent shard tasks do not see each other's.
    """
    previous = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def data_order(train: TrainSection, member_offset: int, members: int) -> dict:
    """What a member's data order depends on (`ensemble.train.epoch_indices`); stored in every checkpoint."""
    return {
        "seed": train.seed,
        "bagging": train.bagging,
        "batch_size": train.batch_size,
        "member_offset": member_offset,
        "members": members,
    }


@task(name="train-fused", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def train_task(
    data_dir: str,
    model: ModelSection,
    optimizer: OptimizerSection,
    train: TrainSection,
    snapshots: SnapshotSection,
    run_dir: str,
    member_offset: int = 0,
) -> dict:
    """Train members `member_offset .. member_offset + model.members - 1` as one fused model.

    A checkpoint (weights, optimiser state, step, data order, per-epoch logs, per-step LR, snapshots) is written to
    `run_dir/checkpoint` after every epoch; an attempt that finds one (Prefect retry, re-run) resumes from it and
    ends exactly where an uninterrupted run would. Returns `{"model_path", "checkpoint", "history_path",
    "snapshot_dir", "epochs", "steps", "member_offset", "members"}`.
    """
    logger = get_run_logger()
    run_dir = Path(run_dir)
    prepared = PreparedData.load(data_dir)
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    checkpoint, order = run_dir / "checkpoint", data_order(train, member_offset, model.members)
    if snapshots.enabled:  # a run that stops mid-cycle would lose its last snapshot: reject it up front
        sgdr_schedule(snapshots, steps_per_epoch).check_whole_cycles(
            train.epochs * steps_per_epoch, steps_per_epoch
        )
    resuming = has_checkpoint(checkpoint)
    with dtype_policy(train.mixed_precision):  # layers keep the policy they were built (or loaded) with
        if resuming:
            fused, opt, state = load_checkpoint(checkpoint)
            check_same_data_order(checkpoint, state, order)
        else:
            fused, state = build_model(prepared, model, member_offset), {"epoch": 0}
            opt = build_optimizer(optimizer, snapshots, steps_per_epoch)
    collector = None
    if snapshots.enabled:
        collector = SnapshotCollector(
            skip_first=snapshots.skip_first,
            keep_best=snapshots.keep_best,
            validation_data=(prepared.x_val, prepared.y_val),
            monitor="val_loss",
        )
    saver = EpochCheckpoint(checkpoint, opt, collector, data_order=order)
    if resuming:
        saver.resume()
        logger.info(f"Resuming from {checkpoint} after epoch {state['epoch']} (step {int(opt.iterations)})")
    callbacks = [saver, EpochProgress(train.epochs, logger.info), *([collector] if collector else [])]
    if os.environ.get(FAULT_AFTER_EPOCH_ENV):
        callbacks.insert(2, FaultAfterEpoch(int(os.environ[FAULT_AFTER_EPOCH_ENV])))  # after the checkpoint
    fit(
        fused,
        prepared.x_train,
        prepared.y_train,
        optimizer=opt,
        config=train_config(train, member_offset=member_offset),
        validation_data=(prepared.x_val, prepared.y_val),
        initial_epoch=state["epoch"],
        callbacks=callbacks,
    )
    return save_results(
        run_dir,
        fused,
        collector.snapshots if collector else None,
        saver.epochs,
        saver.steps,
        saver.learning_rates,
        schedule_cycle_ends(opt, int(opt.iterations)),
        member_offset,
    )


def build_model(prepared: PreparedData, model: ModelSection, member_offset: int) -> FusedMLP:
    """Members `member_offset + n` with seeds `model.seed + member_offset + n`, as in a one-shard run."""
    return FusedMLP(
        model.members,
        prepared.num_features,
        model.hidden_units,
        task=prepared.task,
        num_classes=max(prepared.num_classes, 2),
        activation=model.activation,
        seed=model.seed,
        member_seeds=[model.seed + member_offset + n for n in range(model.members)],
    )


def check_same_data_order(checkpoint: Path, state: dict, order: dict) -> None:
    saved = state.get("data_order")
    if saved is not None and saved != order:
        raise ValueError(
            f"The checkpoint in {checkpoint} was written with data order {saved}, but this run uses {order}: "
            "resuming would not reproduce the run. Restore those train/model settings or delete the checkpoint."
        )


def save_results(
    run_dir: Path,
    fused: FusedMLP,
    snapshots: Snapshots | None,
    epochs: list[tuple[int, dict]],
    steps: list[int],
    learning_rates: list[float],
    cycle_ends: list[int],
    member_offset: int,
) -> dict:
    """The trained model, its snapshots and the whole run's history (resumed epochs included) in `run_dir`."""
    fused.save(run_dir / "model.keras")
    snapshot_dir = str(snapshots.save(run_dir / "snapshots")) if snapshots is not None else None
    history_path = save_history(epochs, learning_rates, steps, run_dir / "history.json", cycle_ends)
    return {
        "model_path": str(run_dir / "model.keras"),
        "checkpoint": str(run_dir / "checkpoint"),
        "history_path": str(history_path),
        "snapshot_dir": snapshot_dir,
        "epochs": len(epochs),
        "steps": steps[-1] if steps else 0,
        "member_offset": member_offset,
        "members": fused.members,
    }


@task(name="merge-shards", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def merge_shards_task(shards: list[dict], train: TrainSection, run_dir: str) -> dict:
    """Stack the shards' members (weights, optimiser state, snapshots, curves) into one ensemble in `run_dir`.

    Returns the same keys as `train_task`, for the merged ensemble of all members.
    """
    run_dir = Path(run_dir)
    shards = sorted(shards, key=lambda shard: shard["member_offset"])
    members = sum(shard["members"] for shard in shards)
    checkpoint = merge_checkpoints(
        [shard["checkpoint"] for shard in shards],
        [shard["member_offset"] for shard in shards],
        run_dir / "checkpoint",
        data_order=data_order(train, 0, members),
    )
    fused, _, _ = load_checkpoint(checkpoint)
    record = read_record(checkpoint)
    return save_results(
        run_dir,
        fused,
        record["snapshots"],
        record["epochs"],
        record["steps"],
        record["learning_rates"],
        record["cycle_ends"],
        0,
    )


@task(name="log-training", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_training_task(
    settings: TrackingSettings, run_id: str, member_run_ids: list[str], trained: dict
) -> None:
    """Log the members' epoch curves (member runs), the mean curves and the per-step learning rate (parent run)."""
    history = json.loads(Path(trained["history_path"]).read_text())
    epochs = [(row.pop("epoch"), row) for row in history["epochs"]]
    tracker = Tracker(settings)
    log_member_epochs(tracker, run_id, member_run_ids, epochs)
    log_learning_rate(
        tracker,
        run_id,
        history["steps"],
        history["lr"],
        history.get("cycle_ends", []),
        Path(trained["history_path"]).with_name("learning_rate.png"),
    )


def save_history(
    epochs: list[tuple[int, dict]], lrs: list[float], steps: list[int], path: Path, cycle_ends: list[int] = ()
) -> Path:
    """Per-epoch logs (arrays as lists), the per-step learning rate and the cycle ends, as JSON."""
    rows = [
        {"epoch": e, **{k: np.asarray(v).tolist() for k, v in logs.items() if k != "unit_gradients"}}
        for e, logs in epochs
    ]
    path.write_text(json.dumps({"epochs": rows, "lr": lrs, "steps": steps, "cycle_ends": list(cycle_ends)}))
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
