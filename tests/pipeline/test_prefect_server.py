"""Scheduled retraining and work-pool deployments against a REAL `prefect server` (not the test harness, which
hides scheduler and API failures), started by this module on a free port with its own PREFECT_HOME, and driven
the way the README tells a user: the `ensemble` and `prefect` commands in subprocesses."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sklearn.datasets import load_wine

from tests.pipeline.servers import (
    BIN,
    child_env,
    free_port,
    prefect_api_session,
    running,
    spawn,
    stop,
    store_client,
)

REPO = Path(__file__).resolve().parents[2]
PREFECT_API = prefect_api_session()  # retries 503 as Prefect's own client does
TINY = [  # 2 members, 2 one-epoch SGDR cycles: a scheduled run trains in about a second
    *("--set", "model.members=2", "--set", "model.hidden_units=[8]", "--set", "train.epochs=2"),
    *("--set", "train.batch_size=8", "--set", "snapshots.cycle_length=1"),
]
TINY_PARAMS = {
    "data": {"source": "wine"},
    "model": {"members": 2, "hidden_units": [8]},
    "train": {"epochs": 2, "batch_size": 8},
    "snapshots": {"cycle_length": 1},
}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real Prefect server on 127.0.0.1 (its own PREFECT_HOME and SQLite database); yields the environment
    a client needs (`PREFECT_API_URL`, ...). The scheduler loops every 2 s instead of 60 s."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = child_env(PREFECT_HOME=str(home), PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, f"{api}/health", home / "server.log", env=env):  # a log file: a pipe would fill up
        yield {**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}


def project_dir(root: Path, migrated_store: Path) -> Path:
    """A working directory as a user has it: `mlflow.yaml` (here: a private SQLite store) and the data."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, root / "mlflow.db")
    (root / "mlflow.yaml").write_text(
        "tracking_uri: sqlite:///mlflow.db\nartifact_location: ./mlartifacts\nexperiment_name: scheduled\n"
    )
    return root


def flow_runs(api: str, deployment: str) -> list[dict]:
    flow_name, name = deployment.split("/")
    deployment_id = PREFECT_API.get(f"{api}/deployments/name/{flow_name}/{name}", timeout=10).json()["id"]
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    return PREFECT_API.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(1)
    stop(process)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-6000:]}")


def states(runs: list[dict]) -> list[str]:
    return [run["state_type"] for run in runs]


def test_served_interval_schedule_fires_survives_a_failed_run_and_stops_on_ctrl_c(
    prefect_server, tmp_path, migrated_store
):
    """`ensemble schedule --interval`: the first run finds no data file and fails (FAILED in Prefect and MLflow);
    the file appears and the next runs complete and register versions; Ctrl-C stops serving with its message."""
    work = project_dir(tmp_path / "project", migrated_store)
    api = prefect_server["PREFECT_API_URL"]
    command = [str(BIN / "ensemble"), "schedule", "--interval", "15", "--name", "every-15s"]
    command += ["--data", "wine.csv", "--target", "label", *TINY]
    log = tmp_path / "schedule.log"
    served = spawn(command, log, cwd=work, env=prefect_server)
    try:
        wait_for(
            lambda: "FAILED" in states(safe_runs(api, "train-ensemble/every-15s")),
            240,
            "the first scheduled run to fail",
            served,
            log,
        )
        wine = load_wine(as_frame=True)
        wine.frame.rename(columns={"target": "label"}).to_csv(work / "wine.csv", index=False)
        wait_for(
            lambda: states(safe_runs(api, "train-ensemble/every-15s")).count("COMPLETED") >= 2,
            420,
            "two completed scheduled runs",
            served,
            log,
        )
    finally:
        stop(served, signal.SIGINT, timeout=60)
    output = log.read_text()
    assert served.returncode == 0, output[-6000:]
    assert "Stopped serving 'train-ensemble/every-15s': its schedule is paused" in output
    deployment = PREFECT_API.get(f"{api}/deployments/name/train-ensemble/every-15s", timeout=10).json()
    assert deployment["paused"] is True

    client = store_client(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scheduled")
    parents = [
        run
        for run in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    by_status = {s: [r for r in parents if r.info.status == s] for s in ("FAILED", "FINISHED")}
    assert by_status["FAILED"], "the run without data is FAILED in MLflow"
    assert len(by_status["FINISHED"]) >= 2
    for run in by_status["FINISHED"]:
        name, version = run.data.tags["registered_model"], run.data.tags["registered_version"]
        assert client.get_model_version(name, version).run_id == run.info.run_id
    flow_run_ids = {run["id"] for run in flow_runs(api, "train-ensemble/every-15s")}
    assert {run.data.tags["prefect.flow_run_id"] for run in parents} <= flow_run_ids


def safe_runs(api: str, deployment: str) -> list[dict]:
    try:
        return flow_runs(api, deployment)
    except (requests.RequestException, KeyError):  # the deployment is not created yet
        return []


def run_worker_once(pool: str, env: dict, cwd: Path, timeout: float = 420) -> str:
    """`prefect worker start --pool POOL --run-once` in `cwd`; returns its output."""
    log = cwd / f"worker-{pool}.log"
    worker = spawn(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--run-once"], log, cwd=cwd, env=env
    )
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop(worker)
    return log.read_text()


def test_prefect_deploy_all_creates_every_deployment_and_a_worker_runs_one(
    prefect_server, tmp_path, migrated_store
):
    """The README's work-pool journey from a checkout: `prefect deploy --all`, then a worker runs a deployment."""
    work = project_dir(tmp_path / "checkout", migrated_store)
    shutil.copy(REPO / "prefect.yaml", work / "prefect.yaml")
    shutil.copytree(REPO / "flows", work / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    prefect = str(BIN / "prefect")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [prefect, "--no-prompt", *args],
            cwd=work,
            env=prefect_server,
            capture_output=True,
            text=True,
            timeout=300,
        )

    created = cli("work-pool", "create", "default", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = cli("deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listed = cli("deployment", "ls")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    api = prefect_server["PREFECT_API_URL"]
    names = [
        f"{flow}/{name}"
        for flow, name in (
            ("train-ensemble", "nightly-retraining"),
            ("compare-ensembles", "weekly-comparison"),
        )
    ]
    for name in names:
        flow_name, deployment = name.split("/")
        assert PREFECT_API.get(f"{api}/deployments/name/{flow_name}/{deployment}", timeout=10).ok, name

    # A run of the deployment now, with a tiny config (its cron has queued the nightly ones for later).
    deployment_id = PREFECT_API.get(
        f"{api}/deployments/name/train-ensemble/nightly-retraining", timeout=10
    ).json()["id"]
    created = PREFECT_API.post(
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": {"config": TINY_PARAMS}},
        timeout=10,
    )
    assert created.ok, created.text
    output = run_worker_once("default", prefect_server, cwd=tmp_path)  # the worker runs elsewhere
    run = PREFECT_API.get(f"{api}/flow_runs/{created.json()['id']}", timeout=10).json()
    assert run["state_type"] == "COMPLETED", output[-6000:]

    client = store_client(f"sqlite:///{work / 'mlflow.db'}")
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("scheduled").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == run["id"]
    assert parent.data.tags.get("registered_version")


def test_schedule_without_serving_binds_a_work_pool_that_a_worker_runs(
    prefect_server, tmp_path, migrated_store
):
    """`ensemble schedule --no-serve --pool P` prints the worker command; a worker started in another directory
    runs the deployment in the directory the schedule was made in (its mlflow.yaml and store)."""
    work = project_dir(tmp_path / "project", migrated_store)
    made = subprocess.run(
        [str(BIN / "ensemble"), "schedule", "--cron", "0 3 * * *", "--no-serve", "--pool", "nightly-pool"]
        + ["--name", "pooled", "--data", "wine", *TINY],
        cwd=work,
        env=prefect_server,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "prefect worker start --pool nightly-pool" in made.stdout
    api = prefect_server["PREFECT_API_URL"]
    deployment = PREFECT_API.get(f"{api}/deployments/name/train-ensemble/pooled", timeout=10).json()
    assert deployment["work_pool_name"] == "nightly-pool"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]

    created = PREFECT_API.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10)
    assert created.ok, created.text
    output = run_worker_once("nightly-pool", prefect_server, cwd=tmp_path)
    run = PREFECT_API.get(f"{api}/flow_runs/{created.json()['id']}", timeout=10).json()  # not the cron's runs
    assert run["state_type"] == "COMPLETED", output[-6000:]
    client = store_client(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("scheduled").experiment_id])
    assert any(
        r.data.tags.get("prefect.flow_run_id") == run["id"] and r.info.status == "FINISHED" for r in runs
    )


def test_schedule_without_a_prefect_server_says_nothing_could_run_it(tmp_path):
    env = child_env(PREFECT_HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [str(BIN / "ensemble"), "schedule", "--interval", "60", "--no-serve", *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Schedules need a Prefect server" in result.stderr
