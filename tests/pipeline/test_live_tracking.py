"""Live tracking: training is written to a real MLflow store while it runs, by a thread or a child process."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import threading

import keras
import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ensemble.fused import FusedMLP, member_seed
from ensemble.schedules import SGDRSchedule
from ensemble.snapshots import SnapshotCollector
from ensemble.train import TrainConfig, fit
from tasks import log_writers
from tasks.config import load_config
from tasks.log_writers import LoggingError, LoggingProcess, LoggingThread, start_logging
from tasks.tracking import Tracker
from tasks.train import MlflowEpochLogger, member_params
from tests.pipeline import logging_probes as probes

MEMBERS, EPOCHS, ROWS, BATCH = 3, 4, 24, 4


WRITERS = [LoggingThread, LoggingProcess]


@pytest.mark.parametrize("writer", WRITERS)
def test_calls_run_in_order_on_a_tracker_of_the_given_settings(writer, tracking):
    with writer(tracking) as logging:
        futures = [logging.submit(probes.record, value) for value in range(50)]
    answers = [future.result() for future in futures]
    assert [value for _, value, _, _ in answers] == list(range(50))
    assert {uri for _, _, _, uri in answers} == {tracking.tracking_uri}
    assert len({(pid, thread) for pid, _, thread, _ in answers}) == 1  # one worker
    if writer is LoggingProcess:
        assert {pid for pid, _, _, _ in answers} == {logging.pid} != {os.getpid()}
    else:
        assert {pid for pid, _, _, _ in answers} == {os.getpid()}
        assert {thread for _, _, thread, _ in answers} != {threading.get_ident()}


@pytest.mark.parametrize("writer", WRITERS)
def test_flush_waits_for_every_call_and_raises_the_first_failure(writer, tracking):
    logging = writer(tracking)
    try:
        logging.submit(probes.fail, "first")
        logging.submit(probes.fail, "second")
        after = logging.submit(probes.record, "after the failures")
        with pytest.raises((LoggingError, RuntimeError), match="first"):
            logging.flush()
        assert after.result()[1] == "after the failures"  # later calls still ran
        logging.flush()  # failures are reported once
        assert logging.idle()
    finally:
        logging.close()


def test_a_failure_in_the_child_comes_back_with_its_traceback(tracking):
    with LoggingProcess(tracking) as logging:
        failed = logging.submit(probes.fail, "in the child")
        with pytest.raises(LoggingError, match=r"(?s)Traceback.*RuntimeError: in the child"):
            logging.flush()
    assert isinstance(failed.exception(), LoggingError)


@pytest.mark.parametrize("writer", WRITERS)
def test_an_error_in_the_block_is_not_masked_by_a_logging_failure(writer, tracking):
    with pytest.raises(ValueError, match="training failed"), writer(tracking) as logging:
        logging.submit(probes.fail, "logging failed")
        raise ValueError("training failed")


@pytest.mark.parametrize(
    ("setting", "cpus", "expected"),
    [
        ("thread", 64, LoggingThread),
        ("process", 1, LoggingProcess),
        ("auto", 2, LoggingThread),
        ("auto", 4, LoggingProcess),
    ],
)
def test_start_logging_takes_the_configured_writer_or_by_available_cores(
    setting, cpus, expected, tracking, monkeypatch
):
    monkeypatch.setattr(log_writers, "available_cpus", lambda: cpus)
    with start_logging(dataclasses.replace(tracking, log_writer=setting)) as logging:
        assert type(logging) is expected


def test_an_unknown_log_writer_is_rejected_naming_the_choices(tracking):
    with pytest.raises(ValueError, match=r"log_writer.*'thread'.*Received: log_writer='threads'"):
        dataclasses.replace(tracking, log_writer="threads")


def test_a_call_that_cannot_be_pickled_fails_at_submit_and_the_process_goes_on(tracking):
    with LoggingProcess(tracking) as logging:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            logging.submit(lambda tracker: None)
        assert logging.submit(probes.record, 1).result()[1] == 1


def test_a_dead_child_fails_pending_and_later_calls_instead_of_hanging(tracking):
    logging = LoggingProcess(tracking)
    try:
        pending = logging.submit(probes.sleep_then_record, 30.0, "never")
        os.kill(logging.pid, signal.SIGKILL)
        with pytest.raises(LoggingError, match="gone"):
            pending.result(timeout=30)
        with pytest.raises(LoggingError, match="gone"):
            logging.submit(probes.record, "later")
    finally:
        logging.close()


def test_ctrl_c_stops_training_but_not_the_queued_writes(tracking):
    """A terminal's Ctrl-C goes to its foreground process group: the child is in a group of its own, and a
    SIGINT sent to it anyway does not stop it either."""
    tracker = Tracker(tracking)
    run = tracker.start_run("parent")
    with LoggingProcess(tracking) as logging:
        assert os.getpgid(logging.pid) != os.getpgid(0)
        logging.submit(probes.record, "started").result()
        logging.submit(probes.sleep_then_record, 1.0, "busy")
        metrics = {run: [Metric("loss", 0.5, 0, step) for step in range(3)]}
        logging.submit(Tracker.log_metric_batches, metrics)
        os.kill(logging.pid, signal.SIGINT)
    assert [m.step for m in tracker.client.get_metric_history(run, "loss")] == [0, 1, 2]


def test_open_child_runs_opens_each_member_once_and_finds_them_again(tracking):
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    config = load_config(overrides={"model.members": MEMBERS})
    first = tracker.open_child_runs(parent, "member", member_params(config.model, config.train))
    again = tracker.open_child_runs(parent, "member", member_params(config.model, config.train))  # a retry
    assert again == first and len(set(first)) == MEMBERS
    shard_model = config.model.model_copy(update={"members": 2})
    shard = tracker.open_child_runs(parent, "member", member_params(shard_model, config.train, 2))
    assert shard[0] == first[2]  # member 2 is found; member 3 is new
    assert tracker.child_runs(parent, "member") == dict(enumerate([*first, shard[1]]))
    params = MlflowClient(tracking.tracking_uri).get_run(shard[1]).data.params
    assert params["member"] == "3" and params["seed"] == str(member_seed(config.model.seed, 3))


class StoreProbe(keras.callbacks.Callback):
    """After each epoch: waits for the log writer, then reads what the store already holds."""

    def __init__(self, logging, tracker: Tracker, parent: str, logger: MlflowEpochLogger):
        super().__init__()
        self.logging, self.tracker, self.parent, self.logger = logging, tracker, parent, logger
        self.seen: list[dict] = []

    def on_train_begin(self, logs=None):
        self.logging.flush()  # the member runs are open (a child has started): every epoch end is idle

    def on_epoch_end(self, epoch, logs=None):
        self.logging.flush()
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


@pytest.mark.parametrize("writer", WRITERS)
def test_each_epoch_is_in_the_store_before_the_next_one_trains(writer, tracking):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(ROWS, 5)).astype("float32"), rng.integers(0, 3, size=ROWS)
    model = FusedMLP(MEMBERS, 5, [8], task="multiclass", num_classes=3, seed=0)
    steps_per_epoch = ROWS // BATCH
    optimizer = keras.optimizers.Adam(SGDRSchedule(2 * steps_per_epoch, lr_init=0.01))  # a cycle: 2 epochs
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    config = load_config(overrides={"model.members": MEMBERS})
    collector = SnapshotCollector(validation_data=(x, y))
    with writer(tracking) as logging:
        logger = MlflowEpochLogger(
            logging, parent, member_params(config.model, config.train), collector, interval_s=0
        )
        probe = StoreProbe(logging, tracker, parent, logger)
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


def test_epoch_logger_rejects_a_negative_interval_and_no_members(tracking):
    with LoggingProcess(tracking) as logging:
        with pytest.raises(ValueError, match="interval_s"):
            MlflowEpochLogger(logging, "run", {0: {}}, interval_s=-1)
        with pytest.raises(ValueError, match="member_params"):
            MlflowEpochLogger(logging, "run", {})
