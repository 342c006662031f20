"""Live tracking: training is written to a real MLflow store while it runs, through MLflow's asynchronous logging;
the learning rate at bounded resolution, the exact curve as an artifact."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ensemble.model.fused import FusedMLP, member_seed
from ensemble.optim.schedules import SGDRSchedule
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.training.train import TrainConfig, fit
from tasks.config import load_config
from tasks.live_logging import MlflowEpochLogger, member_params
from tasks.lr_curve import LR_METRIC, boundary_steps, kept_points, lr_stride
from tasks.tracking import Tracker

MEMBERS, EPOCHS, ROWS, BATCH = 3, 4, 24, 4


def test_open_child_runs_opens_each_member_once_in_order_and_finds_them_again(tracking):
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
    client = MlflowClient(tracking.tracking_uri)
    params = client.get_run(shard[1]).data.params
    assert params["member"] == "3" and params["seed"] == str(member_seed(config.model.seed, 3))
    runs = [client.get_run(run) for run in first]
    assert [run.info.run_name for run in runs] == ["member-00", "member-01", "member-02"]
    assert [run.info.start_time for run in runs] == sorted(run.info.start_time for run in runs)


class StoreProbe(keras.callbacks.Callback):
    """After each epoch: waits for MLflow's queue, then reads what the store already holds."""

    def __init__(self, tracker: Tracker, parent: str, logger: MlflowEpochLogger):
        super().__init__()
        self.tracker, self.parent, self.logger = tracker, parent, logger
        self.seen: list[dict] = []

    def on_train_begin(self, logs=None):
        assert self.logger.member_run_ids  # waits until the member runs are open: every epoch end then sends

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.flush_async()
        client = self.tracker.client
        self.seen.append(
            {
                "member_val_loss": [
                    [m.step for m in client.get_metric_history(run, "val/loss")]
                    for run in self.logger.member_run_ids
                ],
                "snapshots": [
                    len(client.get_metric_history(run, "snapshot/val_loss"))
                    for run in self.logger.member_run_ids
                ],
                "lr_steps": len(client.get_metric_history(self.parent, LR_METRIC)),
                "member_params": [client.get_run(run).data.params for run in self.logger.member_run_ids],
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
    logger = MlflowEpochLogger(
        tracker, parent, member_params(config.model, config.train), collector, interval_s=0
    )
    probe = StoreProbe(tracker, parent, logger)
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
        assert seen["lr_steps"] == (epoch + 1) * steps_per_epoch  # stride 1: every step
        # Each member run's params went with its first values (the runs were opened without them).
        assert [p["member"] for p in seen["member_params"]] == [str(n) for n in range(MEMBERS)]
        assert [p["seed"] for p in seen["member_params"]] == [
            str(member_seed(config.model.seed, n)) for n in range(MEMBERS)
        ]
    client = tracker.client
    means = [m.value for m in client.get_metric_history(parent, "val/member_mean_loss")]
    member_losses = [
        [m.value for m in client.get_metric_history(r, "val/loss")] for r in logger.member_run_ids
    ]
    np.testing.assert_allclose(means, np.mean(member_losses, axis=0), rtol=1e-6)


def test_a_failed_asynchronous_write_is_raised_by_the_flush(tracking):
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    tracker.finish_run(parent)
    tracker.client.delete_run(parent)  # a deleted run refuses metrics
    operations = tracker.log_metrics_async({parent: [Metric("val/loss", 0.5, 0, 0)]})
    with pytest.raises(MlflowException):
        tracker.flush_async(operations)


def test_epoch_logger_rejects_a_negative_interval_no_members_and_a_zero_stride(tracking):
    tracker = Tracker(tracking)
    with pytest.raises(ValueError, match="interval_s"):
        MlflowEpochLogger(tracker, "run", {0: {}}, interval_s=-1)
    with pytest.raises(ValueError, match="member_params"):
        MlflowEpochLogger(tracker, "run", {})
    with pytest.raises(ValueError, match="lr_stride"):
        MlflowEpochLogger(tracker, "run", {0: {}}, lr_stride=0)


def test_lr_points_are_bounded_and_keep_every_cycle_and_segment_boundary():
    steps = list(range(1, 700_001))  # 700,000 steps: a 100,000-row split, 10 epochs at batch 1
    ends = [350_000, 700_000]  # two SGDR cycles
    keep = boundary_steps(ends, [(1, 600_000), (600_001, 700_000)])  # training, then a growth round
    points = kept_points(steps, steps, lr_stride(len(steps), 1000), keep)
    chosen = [step for step, _ in points]
    assert len(chosen) <= 1000
    assert {1, 350_000, 350_001, 600_000, 600_001, 700_000} <= set(chosen)
    assert chosen == sorted(set(chosen))
    gaps = np.diff(chosen)
    assert gaps.max() <= lr_stride(len(steps), 1000)  # evenly spread over the run


@pytest.mark.usefixtures("prefect_api")
def test_lr_metric_points_equal_the_per_step_curve_and_the_artifact_holds_every_step(tmp_path, tracking):
    """`lr_points: 10` on a 62-step run: the metric holds a sample, each point the exact learning rate of its step;
    `plots/learning_rate.parquet` holds every step."""
    import dataclasses

    from flows.train import train_flow
    from tests.pipeline.helpers import EPOCHS, tiny_config

    settings = dataclasses.replace(tracking, lr_points=10)
    result = train_flow(tiny_config(tmp_path, **{"registry.enabled": False}), settings)
    client = MlflowClient(settings.tracking_uri)
    run_id = result["run_id"]
    curve = pd.read_parquet(client.download_artifacts(run_id, "plots/learning_rate.parquet", str(tmp_path)))
    total = len(curve)
    steps_per_epoch = total // EPOCHS
    assert curve["step"].tolist() == list(range(1, total + 1))  # every step
    exact = dict(zip(curve["step"], curve["lr"], strict=True))
    points = client.get_metric_history(run_id, LR_METRIC)
    assert 0 < len(points) <= 10 < total
    for point in points:
        assert point.value == pytest.approx(exact[point.step], rel=1e-6)
    cycle_bounds = {1, steps_per_epoch, steps_per_epoch + 1, total}  # one-epoch cycles
    assert cycle_bounds <= {point.step for point in points}
    assert "plots/learning_rate.png" in [f.path for f in client.list_artifacts(run_id, "plots")]
