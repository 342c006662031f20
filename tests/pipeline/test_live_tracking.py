"""Live tracking: training is written to a real MLflow store while it runs, from a background thread."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ensemble.fused import FusedMLP
from ensemble.schedules import SGDRSchedule
from ensemble.snapshots import SnapshotCollector
from ensemble.train import TrainConfig, fit
from tasks.config import load_config
from tasks.tracking import BackgroundLogging, Tracker
from tasks.train import MlflowEpochLogger, open_member_runs

MEMBERS, EPOCHS, ROWS, BATCH = 3, 4, 24, 4


def test_background_calls_run_in_order_on_one_other_thread():
    seen, threads = [], set()

    def record(value):
        seen.append(value)
        threads.add(threading.current_thread().name)

    with BackgroundLogging() as background:
        for value in range(50):
            background.submit(record, value)
    assert seen == list(range(50))
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_flush_waits_for_every_call_and_raises_the_first_failure():
    done = []

    def fail(message):
        raise RuntimeError(message)

    background = BackgroundLogging()
    background.submit(fail, "first")
    background.submit(fail, "second")
    background.submit(done.append, "after the failures")
    with pytest.raises(RuntimeError, match="first"):
        background.flush()
    assert done == ["after the failures"]  # later calls still ran
    background.flush()  # failures are reported once
    assert background.idle()


def test_an_error_in_the_block_is_not_masked_by_a_logging_failure():
    def fail():
        raise RuntimeError("logging failed")

    with pytest.raises(ValueError, match="training failed"), BackgroundLogging() as background:
        background.submit(fail)
        raise ValueError("training failed")


def test_open_member_runs_opens_each_member_once_and_finds_them_again(tracking):
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    config = load_config(overrides={"model.members": MEMBERS})
    first = open_member_runs(tracker, parent, config.model, config.train)
    again = open_member_runs(tracker, parent, config.model, config.train)  # a retried task
    assert again == first and len(set(first)) == MEMBERS
    shard = open_member_runs(tracker, parent, config.model.model_copy(update={"members": 2}), config.train, 2)
    assert shard[0] == first[2]  # member 2 is found; member 3 is new
    assert tracker.child_runs(parent, "member") == dict(enumerate([*first, shard[1]]))
    params = MlflowClient(tracking.tracking_uri).get_run(shard[1]).data.params
    assert params["member"] == "3" and params["seed"] == str(config.model.seed + 3)


class StoreProbe(keras.callbacks.Callback):
    """After each epoch: waits for the logging thread, then reads what the store already holds."""

    def __init__(
        self, background: BackgroundLogging, tracker: Tracker, parent: str, logger: MlflowEpochLogger
    ):
        super().__init__()
        self.background, self.tracker, self.parent, self.logger = background, tracker, parent, logger
        self.seen: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.background.flush()
        client = self.tracker.client
        self.seen.append(
            {
                "member_val_loss": [
                    [m.step for m in client.get_metric_history(run, "val_loss")]
                    for run in self.logger.member_run_ids
                ],
                "snapshots": [
                    len(client.get_metric_history(run, "snapshot_val_loss"))
                    for run in self.logger.member_run_ids
                ],
                "lr_steps": len(client.get_metric_history(self.parent, "lr")),
            }
        )


def test_each_epoch_is_in_the_store_before_the_next_one_trains(tracking):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(ROWS, 5)).astype("float32"), rng.integers(0, 3, size=ROWS)
    model = FusedMLP(MEMBERS, 5, [8], task="multiclass", num_classes=3, seed=0)
    steps_per_epoch = ROWS // BATCH
    optimizer = keras.optimizers.Adam(SGDRSchedule(2 * steps_per_epoch, lr_init=0.01))  # a cycle: 2 epochs
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    config = load_config(overrides={"model.members": MEMBERS})
    collector = SnapshotCollector(validation_data=(x, y))
    with BackgroundLogging() as background:
        logger = MlflowEpochLogger(
            background,
            tracker,
            parent,
            lambda: open_member_runs(tracker, parent, config.model, config.train),
            collector,
            interval_s=0,
        )
        probe = StoreProbe(background, tracker, parent, logger)
        fit(
            model,
            x,
            y,
            optimizer=optimizer,
            config=TrainConfig(epochs=EPOCHS, batch_size=BATCH),
            validation_data=(x, y),
            callbacks=[collector, logger, probe],
        )
    for epoch, seen in enumerate(probe.seen):
        assert seen["member_val_loss"] == [list(range(epoch + 1))] * MEMBERS
        assert seen["snapshots"] == [(epoch + 1) // 2] * MEMBERS
        assert seen["lr_steps"] == (epoch + 1) * steps_per_epoch
    client = tracker.client
    means = [m.value for m in client.get_metric_history(parent, "val_loss")]
    member_losses = [
        [m.value for m in client.get_metric_history(r, "val_loss")] for r in logger.member_run_ids
    ]
    np.testing.assert_allclose(means, np.mean(member_losses, axis=0), rtol=1e-6)


def test_epoch_logger_rejects_a_negative_interval(tracking):
    with pytest.raises(ValueError, match="interval_s"), BackgroundLogging() as background:
        MlflowEpochLogger(background, Tracker(tracking), "run", list, interval_s=-1)
