"""Prefect tasks of the training step: train the fused ensemble (resumable), logging it live to MLflow.

Per member (nested run `member-00`...): params member/seed/width/bootstrap; metrics per epoch (`step` = epoch):
`train/loss`, `train/accuracy`, `val/loss`, `val/accuracy`; each snapshot's `snapshot/val_*` (`step` = cycle).
Parent run: `schedule/lr` at a bounded set of optimiser steps (`tasks.lr_curve`; `step` = global step), the PNG and
the exact per-step curve, the member-mean curves (`train/member_mean_*`, `val/member_mean_*`) and the ensemble's
`val/ensemble_accuracy` per epoch. All of it is written while training runs, through MLflow's asynchronous logging
(`MlflowEpochLogger`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.checkpoint import EpochCheckpoint, has_checkpoint, load_checkpoint, read_record
from ensemble.data import PreparedData
from ensemble.fused import FusedMLP, member_seed
from ensemble.progress import EpochProgress
from ensemble.schedules import SGDRSchedule
from ensemble.shards import merge_checkpoints
from ensemble.snapshots import SnapshotCollector, Snapshots
from ensemble.sweep import member_settings
from ensemble.train import TrainConfig, fit, schedule_cycle_ends
from tasks.config import ModelSection, OptimizerSection, SnapshotSection, SweepSection, TrainSection
from tasks.lr_curve import boundary_steps, kept_points, lr_metrics, lr_stride, planned_steps
from tasks.tracking import Tracker, TrackingSettings, log_learning_rate_plot

MEMBER_METRICS = {  # history key -> MLflow metric name (per member run)
    "member_loss": "train/loss",
    "member_accuracy": "train/accuracy",
    "member_val_loss": "val/loss",
    "member_val_accuracy": "val/accuracy",
}
PARENT_METRICS = {  # history key -> MLflow metric name (parent run): the member means, and the ensemble's
    "loss": "train/member_mean_loss",
    "accuracy": "train/member_mean_accuracy",
    "val_loss": "val/member_mean_loss",
    "val_accuracy": "val/member_mean_accuracy",
    "val_ensemble_accuracy": "val/ensemble_accuracy",
}
SNAPSHOT_PREFIX = "snapshot/"  # a member's snapshot scores: `snapshot/val_loss`... (step = cycle)


def member_metrics(epoch: int, logs: dict, now: int) -> dict[int, list[Metric]]:
    """One epoch's per-member curves (`MEMBER_METRICS`, `step` = epoch), by member index."""
    metrics: dict[int, list[Metric]] = defaultdict(list)
    for key, name in MEMBER_METRICS.items():
        for n, value in enumerate(np.asarray(logs.get(key, [])).tolist()):
            metrics[n].append(Metric(name, float(value), now, epoch))
    return metrics


def parent_metrics(epoch: int, logs: dict, now: int) -> list[Metric]:
    """One epoch's mean/ensemble curves (`PARENT_METRICS`, `step` = epoch) for the parent run."""
    return [Metric(name, float(logs[key]), now, epoch) for key, name in PARENT_METRICS.items() if key in logs]


def member_params(
    model: ModelSection, train: TrainSection, member_offset: int = 0, sweep: list[dict] | None = None
) -> dict[int, dict]:
    """The params of each member's nested run, by member index (`member_offset .. + model.members - 1`); with a
    sweep (`sweep_members`), also its hyper-parameters (`configuration`, `repeat`, `learning_rate`,
    `weight_decay`, `init_scale`; `bootstrap` is its own), so MLflow's compare views work as for any sweep."""
    params = {}
    for n in range(member_offset, member_offset + model.members):
        params[n] = {
            "member": n,
            "seed": member_seed(model.seed, n),
            "hidden_units": model.hidden_units,
            "width": max(model.hidden_units, default=0),
            "bootstrap": train.bagging,
            "data_seed": train.seed,
        }
        if sweep is not None:
            hyper = {k: v for k, v in sweep[n].items() if k not in ("lr_scale", "bagging")}
            params[n] |= {**hyper, "bootstrap": sweep[n]["bagging"]}
    return params


def sweep_members(
    sweep: SweepSection | None, optimizer: OptimizerSection, snapshots: SnapshotSection, train: TrainSection
) -> list[dict] | None:
    """Each member's configuration of the sweep (`ensemble.sweep.SweepConfig.expand`), or None without one. The
    swept learning rate replaces SGDR's `lr_init` (snapshots on) or `optimizer.learning_rate`."""
    if sweep is None:
        return None
    base = snapshots.lr_init if snapshots.enabled else optimizer.learning_rate
    return sweep.library_config().expand(base, train.bagging)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Streams training into MLflow while it runs, through MLflow's asynchronous logging.

    Per member run (`step` = epoch): `train/loss`, `train/accuracy`, `val/loss`, `val/accuracy`; once a snapshot
    is taken, its `snapshot/val_loss` / `snapshot/val_accuracy` (`step` = cycle). Parent run, with
    `parent_curves=True` (a task that trains every member): the member means per epoch (`PARENT_METRICS`) and
    `schedule/lr` at the steps `lr_stride` and `lr_keep` choose (`tasks.lr_curve`; `step` = global step).

    The member runs are opened (or, on a retry, found: `Tracker.open_child_runs`), in member order, on a thread
    beside the first epoch. Values are buffered and queued at an epoch end once `interval_s` has passed since the
    last send and MLflow has written the previous one (one `log_batch(..., synchronous=False)` per run, holding all
    its pending values); MLflow's worker writes them beside training. The rest is queued at the end of training, which then waits until all of it is written.

    Place it before the `EpochCheckpoint` and call `flush()` when training fails: every epoch whose checkpoint
    exists has then been logged, so a task that resumes from the checkpoint logs each epoch once.

    Args:
        tracker: the store's client.
        run_id: the parent run.
        member_params: the params of each member's run, by member index, in member order (`member_params()`).
        collector: the run's `SnapshotCollector`, whose new snapshot scores are logged with their epoch.
        parent_curves: also log the parent run's mean curves and learning rate.
        interval_s: the least time between two sends (0: at every epoch end).
        record: a resumed run's record so far (`EpochCheckpoint` after `resume()`): what of it the store lacks
            (a killed process sends nothing at its end) is logged when training begins, and nothing that the
            store already has (up to the last step of each metric of each run) is logged again.
        lr_stride: every how many steps a learning rate is logged (`tasks.lr_curve.lr_stride`).
        lr_keep: the steps whose learning rate is logged whatever the stride (`tasks.lr_curve.boundary_steps`).
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        member_params: dict[int, dict],
        collector: SnapshotCollector | None = None,
        parent_curves: bool = True,
        interval_s: float = 10.0,
        record: EpochCheckpoint | None = None,
        lr_stride: int = 1,
        lr_keep: set[int] | None = None,
    ):
        super().__init__()
        if interval_s < 0:
            raise ValueError(f"Argument `interval_s` must be >= 0. Received: interval_s={interval_s}")
        if not member_params:
            raise ValueError("Argument `member_params` must name at least one member. Received: {}")
        if lr_stride < 1:
            raise ValueError(f"Argument `lr_stride` must be >= 1. Received: lr_stride={lr_stride}")
        self.interval_s = float(interval_s)
        self.tracker, self.run_id, self.member_params = tracker, run_id, dict(member_params)
        self.collector, self.parent_curves = collector, parent_curves
        self.lr_stride, self.lr_keep = int(lr_stride), set(lr_keep or ())
        self._opening: Future | None = None  # the member runs, in member order, opened beside training
        self._members: dict[int, list[Metric]] = defaultdict(list)  # member position -> pending values
        self._parent: list[Metric] = []
        self._steps: list[int] = []
        self._learning_rates: list[float] = []
        self._logged_snapshots: set[tuple[int, int]] = set()
        self._operations: list = []  # MLflow's pending writes (`RunOperations`)
        self._last_send = time.monotonic()
        self.record = record
        self._logged_steps: dict[str, dict[str, int]] = {}  # run -> metric -> last step in the store

    @property
    def member_run_ids(self) -> list[str] | None:
        """The member runs, in member order (waits until they are open); None before training."""
        return None if self._opening is None else self._opening.result()

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self._opening is None:  # opening 50 runs takes seconds of store time: beside the first epoch
            opener = ThreadPoolExecutor(1, thread_name_prefix="mlflow-open-member-runs")
            self._opening = opener.submit(
                self.tracker.open_child_runs, self.run_id, "member", self.member_params
            )
            opener.shutdown(wait=False)
        self._last_send = time.monotonic()
        if self.record is None or not self.record.epochs:
            self._logged_snapshots = set(self._snapshot_scores())
            return
        # Resumed: replay the record; `send` drops what the store already has.
        self._logged_steps = self.tracker.latest_steps([self.run_id, *self.member_run_ids])
        self._steps, self._learning_rates = list(self.record.steps), list(self.record.learning_rates)
        for epoch, logs in self.record.epochs:
            self._buffer(epoch, logs, get_current_time_millis())

    def on_steps_end(self, logs: dict) -> None:
        self._steps.extend(logs["steps"])
        self._learning_rates.extend(logs["learning_rates"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._buffer(epoch, logs or {}, get_current_time_millis())
        if time.monotonic() - self._last_send >= self.interval_s and self._idle():
            self.send()

    def _idle(self) -> bool:
        """Whether the member runs are open and MLflow has written every earlier send: a send waits for that, so
        the queue never holds more than one send (a slow store gets fewer, larger sends, not a backlog)."""
        pending = (f for op in self._operations for f in getattr(op, "_operation_futures", ()))
        return self._opening is not None and self._opening.done() and all(f.done() for f in pending)

    def _buffer(self, epoch: int, logs: dict, now: int) -> None:
        """Queue one epoch's values, the snapshot scores not queued yet and the learning rates of its steps."""
        for n, metrics in member_metrics(epoch, logs, now).items():
            self._members[n] += metrics
        scores = {key: s for key, s in self._snapshot_scores().items() if key not in self._logged_snapshots}
        self._logged_snapshots.update(scores)
        for (n, cycle), values in sorted(scores.items()):
            self._members[n] += [
                Metric(f"{SNAPSHOT_PREFIX}{k}", float(v), now, cycle) for k, v in values.items()
            ]
        if self.parent_curves:
            self._parent += parent_metrics(epoch, logs, now)
            points = kept_points(self._steps, self._learning_rates, self.lr_stride, self.lr_keep)
            self._parent += lr_metrics(points, now)
        self._steps, self._learning_rates = [], []

    def on_train_end(self, logs: dict | None = None) -> None:
        self.flush()

    def send(self) -> None:
        """Queue everything buffered: one asynchronous `log_batch` per member run with values, then the parent's."""
        if self._opening is None or self._opening.exception() is not None:
            return  # not begun, or the runs could not be opened: `flush` raises that
        runs = self.member_run_ids
        batches = {runs[n]: self._unlogged(runs[n], batch) for n, batch in sorted(self._members.items())}
        batches[self.run_id] = self._unlogged(self.run_id, self._parent)
        batches = {run: batch for run, batch in batches.items() if batch}
        self._members, self._parent, self._last_send = defaultdict(list), [], time.monotonic()
        if batches:
            self._operations += self.tracker.log_metrics_async(batches)

    def flush(self) -> None:
        """Send what is buffered and wait until every queued value is written (raises a failed write)."""
        self.send()
        operations, self._operations = self._operations, []
        self.tracker.flush_async(operations)
        if self._opening is not None:
            self._opening.result()  # raises if the member runs could not be opened

    def _unlogged(self, run_id: str, metrics: list[Metric]) -> list[Metric]:
        last = self._logged_steps.get(run_id)
        return [m for m in metrics if m.step > last.get(m.key, -1)] if last else metrics

    def _snapshot_scores(self) -> dict[tuple[int, int], dict[str, float]]:
        snapshots = self.collector.snapshots if self.collector is not None else None
        return dict(snapshots.scores) if snapshots is not None else {}


def build_optimizer(
    section: OptimizerSection,
    snapshots: SnapshotSection | None,
    steps_per_epoch: int,
    epochs: int | None = None,
) -> keras.optimizers.Optimizer:
    """The Keras optimiser; with snapshots on, its learning rate is the SGDR schedule of a run of `epochs` epochs
    (`sgdr_schedule`)."""
    learning_rate = section.learning_rate
    if snapshots is not None and snapshots.enabled:
        if epochs is None or epochs < 1:
            raise ValueError(
                f"Argument `epochs` must be >= 1 with snapshots on (SGDR). Received: epochs={epochs}"
            )
        learning_rate = sgdr_schedule(snapshots, steps_per_epoch, epochs)
    if section.name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=section.momentum, nesterov=section.nesterov)


# Seed 002's parameter names, shared by `SnapshotSection` and `SGDRSchedule.from_epochs`.
SGDR_FIELDS = {"cycle_length", "cycle_length_multiplier", "lr_init", "lr_min", "lr_multiplier"}


def sgdr_schedule(snapshots: SnapshotSection, steps_per_epoch: int, epochs: int) -> SGDRSchedule:
    """The SGDR schedule of the snapshot section for a run of `epochs` epochs: its first cycle lasts
    `snapshots.cycle_length_for(epochs)` epochs. Growth rounds continue the same schedule (the optimiser's), so
    they end at the same cycle ends."""
    arguments = snapshots.model_dump(include=SGDR_FIELDS) | {
        "cycle_length": snapshots.cycle_length_for(epochs)
    }
    return SGDRSchedule.from_epochs(steps_per_epoch=steps_per_epoch, **arguments)


PIPELINE_ONLY = ("members_per_shard", "mixed_precision")  # TrainSection fields that are not TrainConfig's
FAULT_AFTER_EPOCH_ENV = "ENSEMBLE_FAULT_AFTER_EPOCH"
PAUSE_AFTER_EPOCH_ENV = "ENSEMBLE_PAUSE_AFTER_EPOCH"


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


class PauseAfterEpoch(keras.callbacks.Callback):
    """Testing hook: right after the checkpoint of epoch `after` (count of completed epochs), the training process
    waits (up to `seconds`), so a test can kill it with SIGKILL at a known point however fast training is.

    `train_task` adds it when `$ENSEMBLE_PAUSE_AFTER_EPOCH` holds a number. Never set it outside tests.
    """

    def __init__(self, after: int, seconds: float = 600):
        super().__init__()
        self.after, self.seconds = int(after), float(seconds)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            time.sleep(self.seconds)


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
    settings: TrackingSettings | None = None,
    run_id: str | None = None,
    parent_curves: bool = True,
    sweep: SweepSection | None = None,
    later_epochs: int = 0,
) -> dict:
    """Train members `member_offset .. member_offset + model.members - 1` as one fused model.

    A checkpoint (weights, optimiser state, step, data order, per-epoch logs, per-step LR, snapshots) is written to
    `run_dir/checkpoint` after every epoch; an attempt that finds one (Prefect retry, re-run) resumes from it and
    ends exactly where an uninterrupted run would.

    With `settings` and a parent `run_id`, training is tracked live: the members' nested runs are opened (or found)
    and every epoch is logged as it ends (`MlflowEpochLogger`, through MLflow's asynchronous logging), plus the
    learning-rate plot and exact curve at the end; `parent_curves=False` (a shard) leaves the parent's mean curves
    and LR to the caller. `later_epochs`: how many epochs growth may add to the run (sets the `schedule/lr`
    metric's stride, `tasks.lr_curve`).

    Returns `{"model_path", "checkpoint", "history_path", "snapshot_dir", "epochs", "steps", "member_offset",
    "members", "member_run_ids"}` (`member_run_ids` is empty when not tracked).
    """
    logger = get_run_logger()
    run_dir = Path(run_dir)
    prepared = PreparedData.load(data_dir)
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    checkpoint, order = run_dir / "checkpoint", data_order(train, member_offset, model.members)
    if snapshots.enabled:  # a run that stops mid-cycle would lose its last snapshot: reject it up front
        cycles = sgdr_schedule(snapshots, steps_per_epoch, train.epochs).check_whole_cycles(
            train.epochs * steps_per_epoch, steps_per_epoch
        )
        logger.info(
            f"SGDR: {cycles} cycle(s) in {train.epochs} epochs, the first of "
            f"{snapshots.cycle_length_for(train.epochs)} epochs (snapshots.cycles={snapshots.cycles}, "
            f"cycle_length={snapshots.cycle_length})"
        )
    resuming = has_checkpoint(checkpoint)
    configurations = sweep_members(sweep, optimizer, snapshots, train)
    swept = member_settings(configurations) if configurations is not None else None
    with dtype_policy(train.mixed_precision):  # layers keep the policy they were built (or loaded) with
        if resuming:
            fused, opt, state = load_checkpoint(checkpoint)
            check_same_data_order(checkpoint, state, order)
        else:
            fused, state = build_model(prepared, model, member_offset), {"epoch": 0}
            if swept is not None:  # per-member initialisation scale
                fused.scale_kernels(swept["init_scale"][member_offset : member_offset + model.members])
            opt = build_optimizer(optimizer, snapshots, steps_per_epoch, train.epochs)
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
    fault, pause = os.environ.get(FAULT_AFTER_EPOCH_ENV), os.environ.get(PAUSE_AFTER_EPOCH_ENV)
    callbacks = [
        saver,
        *([FaultAfterEpoch(int(fault))] if fault else []),  # right after the checkpoint
        *([PauseAfterEpoch(int(pause))] if pause else []),
        EpochProgress(train.epochs, logger.info),
        *([collector] if collector else []),
    ]
    live = None
    if settings is not None and run_id is not None:
        live = MlflowEpochLogger(
            Tracker(settings),
            run_id,
            member_params(model, train, member_offset, configurations),
            collector,
            parent_curves,
            record=saver if resuming else None,
            **lr_sampling(
                schedule_cycle_ends(opt, steps_per_epoch * train.epochs),
                steps_per_epoch,
                train.epochs,
                later_epochs,
                settings.lr_points,
            ),
        )
        callbacks.insert(0, live)  # before the checkpoint: see MlflowEpochLogger
    try:
        fit(
            fused,
            prepared.x_train,
            prepared.y_train,
            optimizer=opt,
            config=train_config(
                train,
                member_offset=member_offset,
                **({k: v for k, v in swept.items() if k != "init_scale"} if swept else {}),
            ),
            validation_data=(prepared.x_val, prepared.y_val),
            initial_epoch=state["epoch"],
            callbacks=callbacks,
        )
    finally:
        if live is not None:
            live.flush()  # after a failure too: the epochs of the last checkpoint are not logged again
    cycle_ends = schedule_cycle_ends(opt, int(opt.iterations))
    if live is not None and parent_curves:
        plot = (saver.steps, saver.learning_rates, cycle_ends, str(run_dir))
        log_learning_rate_plot(live.tracker, run_id, *plot)
    trained = save_results(
        run_dir,
        fused,
        collector.snapshots if collector else None,
        saver.epochs,
        saver.steps,
        saver.learning_rates,
        cycle_ends,
        member_offset,
    )
    member_run_ids = live.member_run_ids if live is not None else []
    return {**trained, "member_run_ids": member_run_ids}


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


def build_model(prepared: PreparedData, model: ModelSection, member_offset: int) -> FusedMLP:
    """Members `member_offset + n` with seeds `member_seed(model.seed, member_offset + n)`, as in a one-shard run."""
    return FusedMLP(
        model.members,
        prepared.num_features,
        model.hidden_units,
        task=prepared.task,
        num_classes=max(prepared.num_classes, 2),
        activation=model.activation,
        seed=model.seed,
        member_seeds=[member_seed(model.seed, member_offset + n) for n in range(model.members)],
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

    Returns the same keys as `train_task`, for the merged ensemble of all members (`member_run_ids` in member
    order).
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
    merged = save_results(
        run_dir,
        fused,
        record["snapshots"],
        record["epochs"],
        record["steps"],
        record["learning_rates"],
        record["cycle_ends"],
        0,
    )
    return {**merged, "member_run_ids": [run for shard in shards for run in shard.get("member_run_ids", [])]}


@task(name="log-training", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_training_task(settings: TrackingSettings, run_id: str, trained: dict, later_epochs: int = 0) -> None:
    """The parent run's curves of a run trained in shards (the shards log their own members): the member means
    per epoch, `schedule/lr` at the steps a one-task run logs (`lr_sampling`), the plot and the exact curve."""
    history_path = Path(trained["history_path"])
    history = json.loads(history_path.read_text())
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
    log_learning_rate_plot(
        tracker, run_id, history["steps"], history["lr"], history["cycle_ends"], str(history_path.parent)
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
    batches: dict[int, list[Metric]] = defaultdict(list)
    for epoch, logs in epochs:
        for n, metrics in member_metrics(epoch, logs, now).items():
            batches[n] += metrics
    for n, member_run in enumerate(member_run_ids):
        tracker.log_metric_batch(member_run, batches[n])
    tracker.log_metric_batch(run_id, [m for epoch, logs in epochs for m in parent_metrics(epoch, logs, now)])
