"""Scale-out tracking: four train flows at once against `mlflow server` backed by PostgreSQL lose nothing.

Needs a PostgreSQL server: `$ENSEMBLE_TEST_POSTGRES_URI` (default `postgresql://postgres@127.0.0.1:5432/postgres`),
a role allowed to create databases. The test creates a fresh database `ensemble_test_<random>` and drops it after;
it is skipped, saying why, when no server answers.
"""

from __future__ import annotations

import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from flows.train import train_flow
from tasks.tracking import TrackingSettings
from tests.pipeline.helpers import EPOCHS, MEMBERS, tiny_config
from tests.pipeline.servers import free_port, spawn, stop, wait_healthy

POSTGRES_URI_ENV = "ENSEMBLE_TEST_POSTGRES_URI"
DEFAULT_POSTGRES_URI = "postgresql://postgres@127.0.0.1:5432/postgres"
FLOWS = 4


@pytest.fixture(scope="module")
def postgres_database():
    """The URI of a fresh, empty PostgreSQL database (dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg (the dev extra) talks to PostgreSQL")
    uri = os.environ.get(POSTGRES_URI_ENV, DEFAULT_POSTGRES_URI)
    try:
        admin = psycopg.connect(uri, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"No PostgreSQL reachable at {uri} ({str(error).strip()}); set {POSTGRES_URI_ENV}.")
    name = f"ensemble_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        # psycopg 3 named explicitly: SQLAlchemy 2.0 (pinned for Prefect) defaults `postgresql://` to psycopg2.
        yield urlsplit(uri)._replace(scheme="postgresql+psycopg", path=f"/{name}").geturl()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def mlflow_server(postgres_database, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (a free port) with the PostgreSQL backend and proxied local artifacts.

    Yields `(url, log_path, wait_ready)`: the server starts in the background (~30 s: migrations and imports), so
    the caller can set up other things meanwhile and call `wait_ready()` before the first request.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port, log_path = free_port(), root / "server.log"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", postgres_database),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    server = spawn(command, log_path)
    url = f"http://127.0.0.1:{port}"

    def wait_ready(timeout: float = 180) -> None:
        wait_healthy(f"{url}/health", server, log_path, timeout)

    try:
        yield url, log_path, wait_ready
    finally:
        stop(server)


def test_four_concurrent_flows_lose_nothing_on_a_postgres_backed_server(tmp_path, mlflow_server, request):
    url, log_path, wait_ready = mlflow_server
    request.getfixturevalue("prefect_api")  # starts (if not yet running) while the MLflow server starts
    wait_ready()
    settings = TrackingSettings(
        tracking_uri=url,
        artifact_location=None,  # the server's proxied artifact store
        experiment_name="concurrent",
        registered_model_name="pg-ensemble",
    )
    configs = [tiny_config(tmp_path / f"flow-{i}", **{"model.seed": 10 * i}) for i in range(FLOWS)]
    with ThreadPoolExecutor(FLOWS) as pool:
        results = list(pool.map(lambda config: train_flow(config, settings), configs))

    client = MlflowClient(url, url)
    experiment = client.get_experiment_by_name("concurrent").experiment_id
    assert len(client.search_runs([experiment], "tags.kind = 'ensemble'")) == FLOWS
    assert len(client.search_runs([experiment], "tags.kind = 'member'", max_results=1000)) == FLOWS * MEMBERS
    for result in results:
        parent = client.get_run(result["run_id"])
        assert parent.info.status == "FINISHED"
        lr = client.get_metric_history(result["run_id"], "schedule/lr")
        assert sorted(m.step for m in lr) == list(range(1, len(lr) + 1)) and len(lr) > 50
        assert {"test/accuracy", "test/nll", "test/num_members"} <= set(parent.data.metrics)
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result['run_id']}'")
        assert sorted(run.info.run_id for run in children) == sorted(result["member_run_ids"])
        for run in children:
            assert run.info.status == "FINISHED"
            for key in ("train/loss", "val/loss", "val/accuracy", "snapshot/val_loss"):
                assert len(client.get_metric_history(run.info.run_id, key)) == EPOCHS, key
        assert "plots/learning_rate.png" in [a.path for a in client.list_artifacts(result["run_id"], "plots")]
    versions = client.search_model_versions("name = 'pg-ensemble'")
    assert sorted(v.run_id for v in versions) == sorted(r["run_id"] for r in results)
    server_log = Path(log_path).read_text()
    assert "database is locked" not in server_log and "Traceback" not in server_log, server_log[-3000:]
