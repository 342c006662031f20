"""Crash and resume: a training task killed (SIGKILL) or failing mid-run resumes from its last epoch checkpoint and
ends with the weights, snapshots, curves and learning-rate record of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.settings import get_current_settings

from ensemble.model.fused import FusedMLP
from ensemble.snapshots.collector import Snapshots
from ensemble.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from flows.train import train_flow
from tasks.config import PipelineConfig
from tasks.data import prepare_data_task
from tasks.faults import FAULT_AFTER_EPOCH_ENV
from tasks.train import train_task
from tests.pipeline.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")
REPO = Path(__file__).resolve().parents[2]

# The train task alone, in its own process, against the test session's Prefect API.
WORKER = """
import dataclasses, json, sys
from prefect import flow
from tasks.config import PipelineConfig
from tasks.train import train_task

@flow(name="train-only")
def train_only(data_dir, config_json, run_dir):
    c = PipelineConfig.model_validate_json(config_json)
    return dataclasses.asdict(train_task(data_dir, c.model, c.optimizer, c.train, c.snapshots, run_dir))

if __name__ == "__main__":
    data_dir, config_path, run_dir = sys.argv[1:]
    print(json.dumps(train_only(data_dir, open(config_path).read(), run_dir)))
"""


@flow(name="train-only")
def train_only(data_dir: str, config: PipelineConfig, run_dir: str) -> dict:
    trained = train_task(data_dir, config.model, config.optimizer, config.train, config.snapshots, run_dir)
    return dataclasses.asdict(trained)


def start_worker(tmp_path: Path, data_dir: str, config: PipelineConfig, run_dir: Path) -> subprocess.Popen:
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop(FAULT_AFTER_EPOCH_ENV, None)
    command = [
        sys.executable,
        str(tmp_path / "worker.py"),
        data_dir,
        str(tmp_path / "config.json"),
        str(run_dir),
    ]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def checkpoint_epoch(run_dir: Path) -> int:
    state = run_dir / "checkpoint" / "state.json"
    try:
        return json.loads(state.read_text())["epoch"] if state.is_file() else 0
    except (json.JSONDecodeError, FileNotFoundError):  # replaced while reading
        return 0


def assert_same_weights(path_a, path_b) -> None:
    a, b = keras.saving.load_model(path_a), keras.saving.load_model(path_b)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-6)


def test_killed_training_process_resumes_to_the_uninterrupted_result(tmp_path):
    """digits, batch size 1 (~1250 steps an epoch, long enough to kill the process mid-epoch), 2 SGDR cycles."""
    config = tiny_config(
        tmp_path,
        **{"data.source": "digits", "model.hidden_units": [16], "train.epochs": 2, "train.batch_size": 1},
    )
    data_dir = prepare_data_task.fn(config.data, config.output_dir)
    reference = train_only(data_dir, config, str(tmp_path / "reference"))

    run_dir = tmp_path / "killed"
    worker = start_worker(tmp_path, data_dir, config, run_dir)
    deadline = time.monotonic() + 120
    while checkpoint_epoch(run_dir) < 1 and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=30)
    killed_at = checkpoint_epoch(run_dir)
    assert killed_at == 1, f"the kill must land in epoch 2; the checkpoint says {killed_at} epochs done"
    assert not (run_dir / "model.keras").exists()  # the killed attempt never finished

    resumed = start_worker(tmp_path, data_dir, config, run_dir)
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert f"after epoch {killed_at}" in output  # it resumed instead of starting over
    result = json.loads(output.strip().splitlines()[-1])

    assert_same_weights(result["model_path"], reference["model_path"])
    ours, theirs = Snapshots.load(result["snapshot_dir"]), Snapshots.load(reference["snapshot_dir"])
    assert sorted(ours.weights) == sorted(theirs.weights) == [(m, c) for m in range(3) for c in range(2)]
    for key, weights in theirs.weights.items():  # snapshots taken before the kill survived it
        for wa, wb in zip(ours.weights[key], weights, strict=True):
            np.testing.assert_allclose(wa, wb, atol=1e-6)
    history, expected = (json.loads(Path(r["history_path"]).read_text()) for r in (result, reference))
    assert history["steps"] == expected["steps"] == list(range(1, result["steps"] + 1))  # one LR per step
    # The cycle ends of the run record (the resumed part's read back from the checkpoint): the schedule's 2.
    assert history["cycle_ends"] == expected["cycle_ends"] == [result["steps"] // 2, result["steps"]]
    np.testing.assert_array_equal(history["lr"], expected["lr"])
    assert [row["epoch"] for row in history["epochs"]] == [0, 1]
    np.testing.assert_allclose(
        [row["member_val_loss"] for row in history["epochs"]],
        [row["member_val_loss"] for row in expected["epochs"]],
        atol=1e-6,
    )


def test_failed_training_task_is_retried_by_prefect_and_resumes(tmp_path, tracking, monkeypatch):
    epochs, members = 3, 3
    overrides = {"train.epochs": epochs}
    reference = train_flow(tiny_config(tmp_path / "reference", **overrides), tracking)

    monkeypatch.setenv(FAULT_AFTER_EPOCH_ENV, "2")  # the first attempt raises after epoch 2's checkpoint
    result = train_flow(tiny_config(tmp_path / "faulty", **overrides), tracking)
    monkeypatch.delenv(FAULT_AFTER_EPOCH_ENV)

    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    with get_client(sync_client=True) as prefect:
        flow_run_id = parent.data.tags["prefect.flow_run_id"]
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    (train_run,) = [run for run in task_runs if run.name.startswith("train-fused")]
    assert train_run.run_count == 2 and train_run.state.is_completed()  # failed once, retried by Prefect

    run_dirs = [tmp_path / name / "outputs" / "runs" for name in ("reference", "faulty")]
    assert_same_weights(*(next(d.iterdir()) / "model.keras" for d in run_dirs))
    steps = [m.step for m in client.get_metric_history(result["run_id"], "schedule/lr")]
    reference_steps = [m.step for m in client.get_metric_history(reference["run_id"], "schedule/lr")]
    assert sorted(steps) == sorted(reference_steps) == list(range(1, len(reference_steps) + 1))
    for member_run in result["member_run_ids"]:  # epochs before the crash are logged too, once
        assert [m.step for m in client.get_metric_history(member_run, "val/accuracy")] == list(range(epochs))
        assert len(client.get_metric_history(member_run, "snapshot/val_loss")) == epochs
    assert parent.data.metrics["test/num_members"] == members * epochs
    assert result["metrics"]["accuracy"] == pytest.approx(reference["metrics"]["accuracy"])


def test_resuming_with_another_data_order_is_refused(tmp_path):
    config = tiny_config(tmp_path, **{"train.epochs": 1})
    data_dir = prepare_data_task.fn(config.data, config.output_dir)
    train_only(data_dir, config, str(tmp_path / "run"))
    other = config.model_copy(update={"train": config.train.model_copy(update={"seed": 7})})
    with pytest.raises(ValueError, match="data order .* Restore those train/model settings or delete"):
        train_only(data_dir, other, str(tmp_path / "run"))


def test_checkpoint_swap_interrupted_by_a_crash_is_recovered(tmp_path):
    model = FusedMLP(2, 3, [4], num_classes=2)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    directory = save_checkpoint(tmp_path / "checkpoint", model, optimizer, epoch=1)
    # A crash between the two renames of the next save: the old checkpoint moved aside, the new one incomplete.
    directory.rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.tmp").mkdir()
    assert has_checkpoint(directory)
    assert load_checkpoint(directory)[2]["epoch"] == 1
    save_checkpoint(directory, model, optimizer, epoch=2)
    assert load_checkpoint(directory)[2]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_mixed_precision_run_computes_in_bfloat16_and_resumes_under_its_policy(tmp_path):
    """bfloat16 matmuls change the result (vs float32); a run split by a resume equals an uninterrupted one."""
    mixed = tiny_config(tmp_path, **{"train.mixed_precision": "mixed_bfloat16"})
    data_dir = prepare_data_task.fn(mixed.data, mixed.output_dir)
    uninterrupted = train_only(data_dir, mixed, str(tmp_path / "mixed"))
    plain = train_only(data_dir, tiny_config(tmp_path), str(tmp_path / "float32"))
    first_epoch = mixed.model_copy(update={"train": mixed.train.model_copy(update={"epochs": 1})})
    train_only(data_dir, first_epoch, str(tmp_path / "split"))
    resumed = train_only(data_dir, mixed, str(tmp_path / "split"))  # continues from epoch 1

    assert_same_weights(resumed["model_path"], uninterrupted["model_path"])
    mixed_weights = keras.saving.load_model(uninterrupted["model_path"]).get_weights()
    plain_weights = keras.saving.load_model(plain["model_path"]).get_weights()
    assert all(w.dtype == np.float32 for w in mixed_weights)
    assert max(np.abs(a - b).max() for a, b in zip(mixed_weights, plain_weights, strict=True)) > 1e-4
    val_loss = json.loads(Path(resumed["history_path"]).read_text())["epochs"][-1]["val_loss"]
    assert np.isfinite(val_loss) and val_loss < 1.0
