"""Live training curves into MLflow: the `MlflowEpochLogger` callback and what it logs.

Per member (nested run `member-00`...): params member/seed/width/bootstrap (`member_params`; a sweep's
hyper-parameters too, `sweep_members`); metrics per epoch (`step` = epoch): `train/loss`, `train/accuracy`,
`val/loss`, `val/accuracy`; each snapshot's `snapshot/val_*` (`step` = cycle). Parent run: `schedule/lr` at a
bounded set of optimiser steps (`tasks.lr_curve`; `step` = global step) and the member-mean curves
(`train/member_mean_*`, `val/member_mean_*`) and the ensemble's `val/ensemble_accuracy` per epoch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np
from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis

from ensemble.model.fused import member_seed
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.training.record import RunRecord
from tasks.config import ModelSection, OptimizerSection, SnapshotSection, SweepSection, TrainSection
from tasks.lr_curve import kept_points, lr_metrics
from tasks.tracking import Tracker

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
    """Each member's configuration of the sweep (`ensemble.training.sweep.SweepConfig.expand`), or None without one. The
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
    beside the first epoch; their params go with their first values (one write per run instead of two; each
    attempt sends them once, the same values again on a retry). Values are buffered and queued at an epoch end once
    `interval_s` has passed since the last send and MLflow has written the previous one (one
    `log_batch(..., synchronous=False)` per run, holding all its pending values); MLflow's worker writes them
    beside training. The rest is queued at the end of training, which then waits until all of it is written.

    Place it before the `EpochCheckpoint` and call `flush()` when training fails: every epoch whose checkpoint
    exists has then been logged, so a task that resumes from the checkpoint logs each epoch once.

    Args:
        tracker: the store's client.
        run_id: the parent run.
        member_params: the params of each member's run, by member index, in member order (`member_params()`).
        collector: the run's `SnapshotCollector`, whose new snapshot scores are logged with their epoch.
        parent_curves: also log the parent run's mean curves and learning rate.
        interval_s: the least time between two sends (0: at every epoch end).
        record: a resumed run's record so far (`EpochCheckpoint.record` after `resume()`): what of it the store
            lacks (a killed process sends nothing at its end) is logged when training begins, and nothing that the
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
        record: RunRecord | None = None,
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
        self._unsent_params = dict(enumerate(self.member_params.values()))  # member position -> params
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
                self.tracker.open_child_runs, self.run_id, "member", self.member_params, log_params=False
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
        """Queue everything buffered: one asynchronous `log_batch` per member run with values (or params not sent
        yet), then the parent's."""
        if self._opening is None or self._opening.exception() is not None:
            return  # not begun, or the runs could not be opened: `flush` raises that
        runs = self.member_run_ids
        batches = {runs[n]: self._unlogged(runs[n], batch) for n, batch in sorted(self._members.items())}
        batches[self.run_id] = self._unlogged(self.run_id, self._parent)
        batches = {run: batch for run, batch in batches.items() if batch}
        params = {runs[n]: values for n, values in self._unsent_params.items()}
        self._members, self._parent, self._last_send = defaultdict(list), [], time.monotonic()
        self._unsent_params = {}
        if batches or params:
            self._operations += self.tracker.log_metrics_async(batches, params)

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
