"""MLflow settings: defaults <- `mlflow.yaml` <- environment, validated when loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.tracking import Tracker, TrackingSettings

PROJECT_FILE = Path(__file__).resolve().parents[2] / "mlflow.yaml"


def test_the_project_file_holds_the_embedded_defaults():
    assert TrackingSettings.load(PROJECT_FILE, environ={}) == TrackingSettings()


def test_the_environment_beats_the_file(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("experiment_name: from-file\nlog_writer: thread\n")
    environ = {"MLFLOW_EXPERIMENT_NAME": "from-env", "ENSEMBLE_LOG_WRITER": "process"}
    settings = TrackingSettings.load(path, environ=environ)
    assert (settings.experiment_name, settings.log_writer) == ("from-env", "process")
    assert settings.tracking_uri == TrackingSettings().tracking_uri  # not in the file: the default


def test_an_unknown_key_is_named_with_the_known_ones(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("tracking_url: sqlite:///x.db\n")
    with pytest.raises(ValueError, match=r"tracking_url.*Known: .*tracking_uri"):
        TrackingSettings.load(path, environ={})


def test_a_bad_log_writer_from_the_environment_is_rejected_when_loaded(tmp_path):
    with pytest.raises(ValueError, match="log_writer"):
        TrackingSettings.load(PROJECT_FILE, environ={"ENSEMBLE_LOG_WRITER": "fork"})


def test_a_missing_settings_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        TrackingSettings.load(tmp_path / "nope.yaml", environ={})


def test_a_tracker_leaves_the_process_environments_mlflow_uris_as_they_were(tracking, monkeypatch, tmp_path):
    """MLflow's `set_tracking_uri` exports the URI; a tracker must not leave it for `TrackingSettings.load()` (the
    environment beats mlflow.yaml) or for child processes to find."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no mlflow.yaml: the defaults
    Tracker(tracking)._use_fluent_uris()  # what log_model and load_model do first
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert TrackingSettings.load().tracking_uri == "sqlite:///mlflow.db"
