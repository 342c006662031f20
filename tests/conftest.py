"""Shared fixtures: one Prefect test API per session, a fresh migrated MLflow SQLite store per test."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (and database) for the whole session: real flow and task runs, real states."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An MLflow SQLite file with every migration applied (migrating costs seconds; copying it does not)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking(tmp_path, migrated_store):
    """`TrackingSettings` of a private MLflow store (SQLite + local artifacts) for one test."""
    from tasks.tracking import TrackingSettings

    db = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, db)
    return TrackingSettings(
        tracking_uri=f"sqlite:///{db}",
        artifact_location=str(tmp_path / "mlartifacts"),
        experiment_name="tests",
        registered_model_name="test-ensemble",
    )
