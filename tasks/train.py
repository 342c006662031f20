"""Prefect tasks of the training step: train the fused ensemble (resumable), logging it live to MLflow; merge
shards; log a sharded run's parent curves.

Per member (nested run `member-00`...): params member/seed/width/bootstrap; metrics per epoch (`step` = epoch):
`train/loss`, `train/accuracy`, `val/loss`, `val/accuracy`; each snapshot's `snapshot/val_*` (`step` = cycle).
Parent run: `schedule/lr` at a bounded set of optimiser steps (`tasks.lr_curve`; `step` = global step), the PNG and
the exact per-step curve, the member-mean curves (`train/member_mean_*`, `val/member_mean_*`) and the ensemble's
`val/ensemble_accuracy` per epoch. All of it is written while training runs, through MLflow's asynchronous logging
(`tasks.live_logging.MlflowEpochLogger`).

Elsewhere: config sections -> library objects in `tasks.factories`, the testing hooks in `tasks.faults`, the files
a training leaves (and `Trained`, the result naming them) in `tasks.trained`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.model.fused import FusedMLP
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.training.checkpoint import EpochCheckpoint, has_checkpoint, load_checkpoint, load_record
from ensemble.training.progress import EpochProgress
from ensemble.training.shards import merge_checkpoints
from ensemble.training.sweep import member_settings
from ensemble.training.train import fit, schedule_cycle_ends
from tasks.config import ModelSection, OptimizerSection, SnapshotSection, SweepSection, TrainSection
from tasks.factories import (
    build_model,
    build_optimizer,
    check_same_data_order,
    data_order,
    dtype_policy,
    sgdr_plan,
    train_config,
)
from tasks.faults import fault_callbacks
from tasks.live_logging import MlflowEpochLogger, member_metrics, member_params, parent_metrics, sweep_members
from tasks.lr_curve import boundary_steps, kept_points, lr_metrics, lr_stride, planned_steps
from tasks.tracking import Tracker, TrackingSettings, log_learning_rate_plot
from tasks.trained import Trained, read_history, save_results


@task(name="train-fused", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def train_task(
    data_dir: str,
    model: ModelSection,
    optimizer: OptimizerSection,
    train: TrainSection,
    snapshots: SnapshotSection,
    run_dir: str,
    member_offset: int = 0,
    settings: TrackingSettings | None = None,
    run_id: str | None = None,
    parent_curves: bool = True,
    sweep: SweepSection | None = None,
    later_epochs: int = 0,
    combiner: str = "mean",
) -> Trained:
    """Train members `member_offset .. member_offset + model.members - 1` as one fused model.

    A checkpoint (weights, optimiser state, step, data order, per-epoch logs, per-step LR, snapshots) is written to
    `run_dir/checkpoint` after every epoch; an attempt that finds one (Prefect retry, re-run) resumes from it and
    ends exactly where an uninterrupted run would.

    With `settings` and a parent `run_id`, training is tracked live (`MlflowEpochLogger`), plus the learning-rate
    plot and exact curve at the end; `parent_curves=False` (a shard) leaves the parent's mean curves and LR to the
    caller. `later_epochs`: how many epochs growth may add to the run (the `schedule/lr` stride, `lr_sampling`).
    `combiner`: how `val/ensemble_accuracy` combines the members (`evaluation.combiner`, `TrainConfig.combiner`).
    """
    logger, run_dir, prepared = get_run_logger(), Path(run_dir), PreparedData.load(data_dir)
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    if snapshots.enabled:  # a run that stops mid-cycle would lose its last snapshot: reject it up front
        logger.info(sgdr_plan(snapshots, steps_per_epoch, train.epochs))
    configurations = sweep_members(sweep, optimizer, snapshots, train)
    swept = member_settings(configurations) if configurations is not None else {}
    init_scale = swept["init_scale"][member_offset : member_offset + model.members] if swept else None
    sections = (model, optimizer, train, snapshots)
    fused, saver, initial_epoch = start_or_resume(
        run_dir / "checkpoint", prepared, *sections, member_offset, init_scale, logger.info
    )
    live = None
    if settings is not None and run_id is not None:
        members = member_params(model, train, member_offset, configurations)
        epochs = (steps_per_epoch, train.epochs, later_epochs)
        live = live_logger(settings, run_id, members, saver, parent_curves, *epochs)
    callbacks = [
        *([live] if live else []),  # before the checkpoint: see MlflowEpochLogger
        saver,
        *fault_callbacks(),  # right after the checkpoint
        EpochProgress(train.epochs, logger.info),
        *([saver.collector] if saver.collector else []),
    ]
    changes = {k: v for k, v in swept.items() if k != "init_scale"}  # a sweep's per-member settings
    try:
        fit(
            fused,
            prepared.x_train,
            prepared.y_train,
            optimizer=saver.optimizer,
            config=train_config(train, member_offset=member_offset, combiner=combiner, **changes),
            validation_data=(prepared.x_val, prepared.y_val),
            initial_epoch=initial_epoch,
            callbacks=callbacks,
        )
    finally:
        if live is not None:
            live.flush()  # after a failure too: the epochs of the last checkpoint are not logged again
    return finish_training(run_dir, fused, saver, live, parent_curves, member_offset)


def start_or_resume(
    checkpoint: Path,
    prepared: PreparedData,
    model: ModelSection,
    optimizer: OptimizerSection,
    train: TrainSection,
    snapshots: SnapshotSection,
    member_offset: int,
    init_scale: list[float] | None,
    log: Callable[[str], None] = print,
) -> tuple[FusedMLP, EpochCheckpoint, int]:
    """The model to train, its checkpoint writer (holding the optimiser and the snapshot collector) and the epoch
    training starts at: loaded from `checkpoint` when one is there (its data order checked, its record and
    snapshots resumed; said through `log`), else new (epoch 0; `init_scale` `(N,)`: a sweep's per-member
    initialisation scale)."""
    order = data_order(train, member_offset, model.members)
    resuming = has_checkpoint(checkpoint)
    with dtype_policy(train.mixed_precision):  # layers keep the policy they were built (or loaded) with
        if resuming:
            fused, opt, state = load_checkpoint(checkpoint)
            check_same_data_order(checkpoint, state, order)
        else:
            fused, state = build_model(prepared, model, member_offset, init_scale), {"epoch": 0}
            steps_per_epoch = len(prepared.y_train) // train.batch_size
            opt = build_optimizer(optimizer, snapshots, steps_per_epoch, train.epochs)
    saver = EpochCheckpoint(checkpoint, opt, snapshot_collector(snapshots, prepared), data_order=order)
    if resuming:
        saver.resume()
        log(f"Resuming from {checkpoint} after epoch {state['epoch']} (step {int(opt.iterations)})")
    return fused, saver, state["epoch"]


def snapshot_collector(snapshots: SnapshotSection, prepared: PreparedData) -> SnapshotCollector | None:
    """The collector of a run's snapshots (scored on the validation split), or None with snapshots off."""
    if not snapshots.enabled:
        return None
    return SnapshotCollector(
        skip_first=snapshots.skip_first,
        keep_best=snapshots.keep_best,
        validation_data=(prepared.x_val, prepared.y_val),
        monitor="val_loss",
    )


def live_logger(
    settings: TrackingSettings,
    run_id: str,
    members: dict[int, dict],
    saver: EpochCheckpoint,
    parent_curves: bool,
    steps_per_epoch: int,
    epochs: int,
    later_epochs: int,
) -> MlflowEpochLogger:
    """The callback logging a training of `epochs` epochs live into the parent run `run_id` and the nested runs of
    `members` (their params by member index); a resumed run's record (in `saver`) is replayed where the store
    lacks it."""
    cycle_ends = schedule_cycle_ends(saver.optimizer, steps_per_epoch * epochs)
    return MlflowEpochLogger(
        Tracker(settings),
        run_id,
        members,
        saver.collector,
        parent_curves,
        record=saver.record if saver.record.epochs else None,
        **lr_sampling(cycle_ends, steps_per_epoch, epochs, later_epochs, settings.lr_points),
    )


def finish_training(
    run_dir: Path,
    fused: FusedMLP,
    saver: EpochCheckpoint,
    live: MlflowEpochLogger | None,
    parent_curves: bool,
    member_offset: int,
) -> Trained:
    """Save the trained model, snapshots and history in `run_dir` (`tasks.trained.save_results`); tracked live
    with `parent_curves` (not a shard), also log the run's learning-rate plot and exact curve."""
    record = saver.record
    if live is not None and parent_curves:
        plot = (record.steps, record.learning_rates, record.cycle_ends, str(run_dir))
        log_learning_rate_plot(live.tracker, live.run_id, *plot)
    snapshots = saver.collector.snapshots if saver.collector else None
    member_run_ids = live.member_run_ids if live is not None else ()
    return save_results(run_dir, fused, snapshots, record, member_offset, member_run_ids)


def lr_sampling(
    cycle_ends: list[int], steps_per_epoch: int, epochs: int, later_epochs: int, lr_points: int
) -> dict:
    """`MlflowEpochLogger`'s `lr_stride` and `lr_keep` for a training of `epochs` epochs (cycles ending at the
    steps `cycle_ends`) that growth may extend by `later_epochs`: at most about `lr_points` points of
    `schedule/lr`, the first and last step of training and of every SGDR cycle among them."""
    last = steps_per_epoch * epochs
    return {
        "lr_stride": lr_stride(planned_steps(steps_per_epoch, epochs, later_epochs), lr_points),
        "lr_keep": boundary_steps(cycle_ends, [(1, last)]),
    }


@task(name="merge-shards", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def merge_shards_task(shards: list[Trained], train: TrainSection, run_dir: str) -> Trained:
    """Stack the shards' members (weights, optimiser state, snapshots, curves) into one ensemble in `run_dir`.

    Returns the merged ensemble of all members (`member_run_ids` in member order).
    """
    run_dir = Path(run_dir)
    shards = sorted(shards, key=lambda shard: shard.member_offset)
    checkpoint = merge_checkpoints(
        [shard.checkpoint for shard in shards],
        [shard.member_offset for shard in shards],
        run_dir / "checkpoint",
        data_order=data_order(train, 0, sum(shard.members for shard in shards)),
    )
    fused, _, _ = load_checkpoint(checkpoint)
    saved = load_record(checkpoint)
    member_run_ids = [run for shard in shards for run in shard.member_run_ids]
    return save_results(run_dir, fused, saved.snapshots, saved.record, 0, member_run_ids)


@task(name="log-training", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_training_task(
    settings: TrackingSettings, run_id: str, trained: Trained, later_epochs: int = 0
) -> None:
    """The parent run's curves of a run trained in shards (the shards log their own members): the member means
    per epoch, `schedule/lr` at the steps a one-task run logs (`lr_sampling`), the plot and the exact curve."""
    history = read_history(trained)
    tracker = Tracker(settings)
    now = get_current_time_millis()
    epochs, steps = len(history["epochs"]), history["steps"]
    spe = len(steps) // max(epochs, 1)
    chosen = lr_sampling(history["cycle_ends"], spe, epochs, later_epochs, settings.lr_points)
    tracker.log_metric_batch(
        run_id,
        [m for row in history["epochs"] for m in parent_metrics(row["epoch"], row, now)]
        + lr_metrics(kept_points(steps, history["lr"], chosen["lr_stride"], chosen["lr_keep"]), now),
    )
    directory = str(Path(trained.history_path).parent)
    log_learning_rate_plot(tracker, run_id, steps, history["lr"], history["cycle_ends"], directory)


def log_member_epochs(
    tracker: Tracker, run_id: str, member_run_ids: list[str], epochs: list[tuple[int, dict]]
) -> None:
    """Per-member epoch curves into the member runs, the mean/ensemble curves into the parent (`step` = epoch)."""
    now = get_current_time_millis()
    batches: dict[int, list[Metric]] = defaultdict(list)
    for epoch, logs in epochs:
        for n, metrics in member_metrics(epoch, logs, now).items():
            batches[n] += metrics
    for n, member_run in enumerate(member_run_ids):
        tracker.log_metric_batch(member_run, batches[n])
    tracker.log_metric_batch(run_id, [m for epoch, logs in epochs for m in parent_metrics(epoch, logs, now)])
