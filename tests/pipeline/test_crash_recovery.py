"""Crash recovery as a user meets it: `ensemble train` killed with SIGKILL, the same command run again continues the
same MLflow runs from the checkpoint and ends as an uninterrupted run; runs of dead processes never stay RUNNING."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tasks.faults import PAUSE_AFTER_EPOCH_ENV
from tasks.recovery import FLOW_RUN_TAG, KEY_TAG, PID_TAG, open_parent_run, owner_tags, resume_key
from tasks.tracking import Tracker
from tests.pipeline.helpers import tiny_config
from tests.pipeline.servers import child_env, store_client

ENSEMBLE = str(Path(sys.executable).parent / "ensemble")
# digits at batch size 1, 4 epochs; the first attempt is killed while it waits after epoch 2's checkpoint.
ARGS = ["train", "--data", "digits", "--members", "3", "--epochs", "4"]
ARGS += [
    "--set",
    "model.hidden_units=[16]",
    "--set",
    "snapshots.cycle_length=1",
    "--set",
    "registry.enabled=false",
]


def workdir(root: Path, migrated_store: Path) -> tuple[Path, dict]:
    """A user's working directory (mlflow.yaml -> a private SQLite store) and a private Prefect home."""
    root.mkdir(parents=True)
    (root / "mlflow.db").write_bytes(migrated_store.read_bytes())
    (root / "mlflow.yaml").write_text("tracking_uri: sqlite:///mlflow.db\nexperiment_name: recovery\n")
    env = child_env(
        PREFECT_HOME=str(root / "prefect-home")
    )  # Prefect without a server, as `make run` uses it
    return root, env


def train(cwd: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [ENSEMBLE, *ARGS, *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, output[-6000:]
    return output


def checkpoint_epoch(cwd: Path) -> int:
    for state in (cwd / "outputs" / "runs").glob("*/checkpoint/state.json"):
        try:
            return json.loads(state.read_text())["epoch"]
        except (json.JSONDecodeError, FileNotFoundError):  # replaced while reading
            return 0
    return 0


def the_parent(client: MlflowClient):
    experiment = client.get_experiment_by_name("recovery")
    (parent,) = [
        r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
    ]
    return parent


def members(client: MlflowClient, parent) -> list:
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return sorted(runs, key=lambda run: int(run.data.tags["member"]))


def curves(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_killed_train_command_resumes_the_same_runs_and_ends_as_an_uninterrupted_run(
    tmp_path, migrated_store
):
    reference_dir, env = workdir(tmp_path / "reference", migrated_store)
    finish(train(reference_dir, env))

    killed_dir, env = workdir(tmp_path / "killed", migrated_store)
    first = train(killed_dir, {**env, PAUSE_AFTER_EPOCH_ENV: "2"})  # waits after epoch 2's checkpoint
    deadline = time.monotonic() + 300
    while checkpoint_epoch(killed_dir) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # whatever the live logger sends by itself, it has sent: only SIGKILL stops it now
    assert first.poll() is None, first.communicate()[0][-6000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    killed_at = checkpoint_epoch(killed_dir)
    assert killed_at == 2, f"the kill must land after epoch 2; the checkpoint says {killed_at} epochs done"

    client = store_client(f"sqlite:///{killed_dir / 'mlflow.db'}")
    killed = the_parent(client)
    assert killed.info.status == "RUNNING"  # what SIGKILL leaves behind
    killed_flow_run = killed.data.tags[FLOW_RUN_TAG]

    output = finish(train(killed_dir, env))  # the same command again
    assert f"Resuming MLflow run {killed.info.run_id}" in output
    assert f"after epoch {killed_at}" in output  # from the checkpoint, not from epoch 1

    parent = the_parent(client)  # still one parent run: the same one, now FINISHED
    assert parent.info.run_id == killed.info.run_id and parent.info.status == "FINISHED"
    reference_client = MlflowClient(
        f"sqlite:///{reference_dir / 'mlflow.db'}", f"sqlite:///{reference_dir / 'mlflow.db'}"
    )
    reference = the_parent(reference_client)
    lr, expected_lr = (
        curves(client, parent.info.run_id, "schedule/lr"),
        curves(reference_client, reference.info.run_id, "schedule/lr"),
    )
    assert [s for s, _ in lr] == [s for s, _ in expected_lr]  # each logged step once
    np.testing.assert_allclose([v for _, v in lr], [v for _, v in expected_lr])

    ours, theirs = members(client, parent), members(reference_client, reference)
    assert len(ours) == len(theirs) == 3 and all(r.info.status == "FINISHED" for r in ours)
    for mine, other in zip(ours, theirs, strict=True):
        for key in ("val/loss", "train/loss", "snapshot/val_loss"):
            got, want = (
                curves(client, mine.info.run_id, key),
                curves(reference_client, other.info.run_id, key),
            )
            assert [s for s, _ in got] == [s for s, _ in want] == list(range(4)), key  # each epoch once
            np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5, err_msg=key)
        assert mine.data.metrics["test/accuracy"] == pytest.approx(other.data.metrics["test/accuracy"])

    prefect_db = sqlite3.connect(killed_dir / "prefect-home" / "prefect.db")
    rows = dict(prefect_db.execute("select id, state_type from flow_run").fetchall())
    prefect_db.close()
    assert rows[killed_flow_run] == "CRASHED"
    assert rows[parent.data.tags[FLOW_RUN_TAG]] == "COMPLETED"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def left_running(tracker: Tracker, key: str | None, members: int = 2) -> str:
    """A parent run (+ member runs) as a killed process leaves it: RUNNING, owned by a pid that is gone."""
    owner = {**owner_tags(), PID_TAG: str(dead_pid()), **({KEY_TAG: key} if key else {})}
    run_id = tracker.start_run("killed", tags={"kind": "ensemble", **owner})
    tracker.open_child_runs(run_id, "member", {n: {"member": n} for n in range(members)})
    return run_id


def statuses(tracker: Tracker, run_id: str) -> list[str]:
    children = tracker.client.search_runs([tracker.experiment_id()], f"tags.mlflow.parentRunId = '{run_id}'")
    return [tracker.client.get_run(run_id).info.status, *(r.info.status for r in children)]


def test_runs_of_dead_processes_are_marked_failed_and_the_matching_one_resumed(tmp_path, tracking):
    tracker = Tracker(tracking)
    config = tiny_config(tmp_path)
    key = resume_key(config)
    other = left_running(tracker, key="another-config")
    mine = left_running(tracker, key=key)
    alive = tracker.start_run("alive", tags={"kind": "ensemble", **owner_tags(), KEY_TAG: key})
    said: list[str] = []

    opened = open_parent_run(tracker, "new", {}, key, "auto", log=said.append)

    assert opened.run_id == mine and opened.resumed
    assert statuses(tracker, mine) == ["RUNNING", "RUNNING", "RUNNING"]
    assert statuses(tracker, other) == ["FAILED", "FAILED", "FAILED"]
    assert tracker.client.get_run(alive).info.status == "RUNNING"  # its process (this one) lives
    assert any(other in line and "marked FAILED" in line for line in said)
    assert any(f"Resuming MLflow run {mine}" in line for line in said)
    assert tracker.client.get_run(mine).data.tags[PID_TAG] == str(os.getpid())  # now owned by this process


def test_fresh_starts_a_new_run_and_marks_the_dead_one_failed(tmp_path, tracking):
    tracker = Tracker(tracking)
    key = resume_key(tiny_config(tmp_path))
    dead = left_running(tracker, key=key)

    opened = open_parent_run(tracker, "new", {}, key, "fresh", log=lambda line: None)

    assert opened.run_id != dead and not opened.resumed
    assert statuses(tracker, dead) == ["FAILED", "FAILED", "FAILED"]


def test_resume_names_a_run_that_cannot_be_continued(tmp_path, tracking):
    tracker = Tracker(tracking)
    key = resume_key(tiny_config(tmp_path))
    finished = tracker.start_run("done", tags={KEY_TAG: key})
    tracker.finish_run(finished)
    running = tracker.start_run("running", tags={**owner_tags(), KEY_TAG: key})
    other_config = left_running(tracker, key="another-config")

    with pytest.raises(ValueError, match="is FINISHED; there is nothing to resume"):
        open_parent_run(tracker, "new", {}, key, finished)
    with pytest.raises(ValueError, match=f"still RUNNING in pid {os.getpid()}"):
        open_parent_run(tracker, "new", {}, key, running)
    with pytest.raises(ValueError, match="another config or data content"):
        open_parent_run(tracker, "new", {}, key, other_config)
    with pytest.raises(ValueError, match="no such MLflow run"):
        open_parent_run(tracker, "new", {}, key, "0" * 32)


def test_a_failed_run_resumes_explicitly_from_its_checkpoint(tmp_path, tracking):
    tracker = Tracker(tracking)
    key = resume_key(tiny_config(tmp_path))
    failed = left_running(tracker, key=key)
    tracker.finish_run(failed, "FAILED")

    opened = open_parent_run(tracker, "new", {}, key, failed, log=lambda line: None)

    assert opened.run_id == failed and opened.resumed
    assert statuses(tracker, failed) == ["RUNNING", "RUNNING", "RUNNING"]


@pytest.mark.usefixtures("prefect_api")
def test_a_dead_runs_flow_run_on_another_prefect_api_is_said_to_be_left_as_it_is(tmp_path, tracking):
    """Marked FAILED in MLflow; its flow run lives on a Prefect API this process cannot reach (a worker's server,
    seen from a run on the CLI's temporary one), so the log must not claim it Crashed."""
    tracker = Tracker(tracking)
    elsewhere = "0f5e2c3a-1b2c-4d5e-8f90-123456789abc"  # no such flow run on this API
    run_id = left_running(tracker, key="another-config")
    tracker.set_tags(run_id, {FLOW_RUN_TAG: elsewhere})
    said: list[str] = []

    open_parent_run(tracker, "new", {}, resume_key(tiny_config(tmp_path)), "auto", log=said.append)

    assert statuses(tracker, run_id) == ["FAILED", "FAILED", "FAILED"]
    [line] = [line for line in said if run_id in line]
    assert f"flow run {elsewhere} is unknown to this Prefect API and left as it is there" in line
    assert "Crashed" not in line
