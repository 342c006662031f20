"""Sharded training: members split into shards, each trained by its own Prefect task on the configured task runner,
merged back into the ensemble a single task would have trained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from ensemble.model.fused import member_seed
from ensemble.snapshots.collector import Snapshots
from ensemble.training.shards import merge_epoch_logs, shard_ranges
from flows.train import build_task_runner, train_flow
from tasks.config import RunnerSection
from tests.pipeline.helpers import EPOCHS, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")
MEMBERS = 5


def run_dir(result: dict, config) -> Path:
    return Path(config.output_dir).resolve() / "runs" / result["run_id"]


def assert_same_model(path_a: Path, path_b: Path) -> None:
    a, b = keras.saving.load_model(path_a), keras.saving.load_model(path_b)
    assert a.get_config()["member_seeds"] == b.get_config()["member_seeds"]
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-6)


def test_shard_ranges_cover_every_member_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert shard_ranges(3, None) == shard_ranges(3, 7) == [(0, 3)]
    with pytest.raises(ValueError, match="members_per_shard"):
        shard_ranges(3, 0)


def test_merged_epoch_logs_recompute_member_means_and_drop_ensemble_values():
    shard_a = [(0, {"loss": 1.0, "member_loss": [1.0, 1.0], "val_ensemble_accuracy": 0.5, "lr": 0.1})]
    shard_b = [(0, {"loss": 4.0, "member_loss": [4.0], "val_ensemble_accuracy": 0.9, "lr": 0.1})]
    assert merge_epoch_logs([shard_a, shard_b]) == [
        (0, {"loss": 2.0, "member_loss": [1.0, 1.0, 4.0], "lr": 0.1})
    ]


def test_shards_on_a_local_dask_cluster_merge_into_the_one_shard_ensemble(tmp_path, tracking):
    """5 members in shards of 2 (2 + 2 + 1) on 2 Dask workers vs one task: same weights, snapshots, runs."""
    single = tiny_config(tmp_path / "single", **{"model.members": MEMBERS})
    sharded = tiny_config(
        tmp_path / "sharded",
        **{
            "model.members": MEMBERS,
            "train.members_per_shard": 2,
            "runner.kind": "dask",
            "runner.workers": 2,
            "runner.processes": False,
        },
    )
    one = train_flow(single, tracking)
    many = train_flow(sharded, tracking)

    one_dir, many_dir = run_dir(one, single), run_dir(many, sharded)
    assert sorted(p.name for p in many_dir.glob("shard-*")) == ["shard-0", "shard-1", "shard-2"]
    assert_same_model(one_dir / "model.keras", many_dir / "model.keras")
    assert_same_model(one_dir / "snapshot_ensemble.keras", many_dir / "snapshot_ensemble.keras")
    snapshots = Snapshots.load(many_dir / "snapshots")
    assert sorted(snapshots.weights) == sorted(Snapshots.load(one_dir / "snapshots").weights)
    assert many["metrics"]["accuracy"] == pytest.approx(one["metrics"]["accuracy"])

    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(many["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{many['run_id']}'"
    )
    assert sorted(int(run.data.params["member"]) for run in children) == list(range(MEMBERS))
    seeds = {int(run.data.params["member"]): run.data.params["seed"] for run in children}
    assert seeds == {n: str(member_seed(0, n)) for n in range(MEMBERS)}  # as one shard would seed them
    for run in children:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == EPOCHS
    steps = [m.step for m in client.get_metric_history(many["run_id"], "schedule/lr")]
    assert sorted(steps) == list(range(1, len(steps) + 1))  # logged once, not once per shard
    assert len(steps) == len(client.get_metric_history(one["run_id"], "schedule/lr"))
    val_loss = {m.step: m.value for m in client.get_metric_history(many["run_id"], "val/member_mean_loss")}
    expected = {m.step: m.value for m in client.get_metric_history(one["run_id"], "val/member_mean_loss")}
    assert val_loss == pytest.approx(expected, abs=1e-6)  # the mean over all members, not over one shard


def test_sharded_run_on_the_thread_pool_grows_the_merged_ensemble(tmp_path, tracking):
    """The merged checkpoint carries every member's optimiser state, so growth rounds continue from it."""
    config = tiny_config(
        tmp_path,
        **{
            "model.hidden_units": [2],
            "train.members_per_shard": 2,
            "snapshots.enabled": False,
            "growth.enabled": True,
            "growth.epochs_per_round": 1,
            "growth.max_rounds": 1,
            "growth.patience": 1,
            "registry.enabled": False,
        },
    )
    result = train_flow(config, tracking)
    grown = keras.saving.load_model(run_dir(result, config) / "grown.keras")
    assert grown.members == config.model.members and grown.hidden_units == [4]


def test_runner_config_is_checked_where_it_is_parsed_and_built():
    with pytest.raises(ValidationError, match="runner.address is only used with kind 'dask' or 'ray'"):
        RunnerSection(kind="thread", address="tcp://127.0.0.1:8786")
    with pytest.raises(ValidationError, match="kind"):
        RunnerSection(kind="spark")
    if importlib.util.find_spec("prefect_ray") is None:
        with pytest.raises(ImportError, match=r"prefect-ray: pip install 'fused-ensembles\[ray\]'"):
            build_task_runner(RunnerSection(kind="ray"))
    assert type(build_task_runner(RunnerSection(workers=3))).__name__ == "ThreadPoolTaskRunner"
    assert type(build_task_runner(RunnerSection(kind="dask", address="tcp://127.0.0.1:8786"))).__name__ == (
        "DaskTaskRunner"
    )
