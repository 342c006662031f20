"""MLflow settings: defaults <- `mlflow.yaml` <- environment, validated when loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.tracking import DEFAULT_UI_URL, Tracker, TrackingSettings

PROJECT_FILE = Path(__file__).resolve().parents[2] / "mlflow.yaml"


def test_the_project_file_holds_the_embedded_defaults():
    assert TrackingSettings.load(PROJECT_FILE, environ={}) == TrackingSettings()


def test_the_environment_beats_the_file(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("experiment_name: from-file\nlr_points: 500\n")
    environ = {"MLFLOW_EXPERIMENT_NAME": "from-env", "ENSEMBLE_LR_POINTS": "200"}
    settings = TrackingSettings.load(path, environ=environ)
    assert (settings.experiment_name, settings.lr_points) == ("from-env", 200)
    assert settings.tracking_uri == TrackingSettings().tracking_uri  # not in the file: the default


def test_an_unknown_key_is_named_with_the_known_ones(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("tracking_url: sqlite:///x.db\n")
    with pytest.raises(ValueError, match=r"tracking_url.*Known: .*tracking_uri"):
        TrackingSettings.load(path, environ={})


def test_the_retired_log_writer_key_is_named_as_unknown(tmp_path):
    path = tmp_path / "mlflow.yaml"
    path.write_text("log_writer: thread\n")
    with pytest.raises(ValueError, match=r"log_writer.*Known: .*lr_points"):
        TrackingSettings.load(path, environ={})


@pytest.mark.parametrize("value", ["9", "many", "12.5"])
def test_a_bad_lr_points_from_the_environment_is_rejected_when_loaded(value):
    with pytest.raises(ValueError, match=rf"lr_points.*>= 10. Received: lr_points='{value}'"):
        TrackingSettings.load(PROJECT_FILE, environ={"ENSEMBLE_LR_POINTS": value})


def test_links_go_to_the_configured_ui_address(tracking):
    import dataclasses

    assert TrackingSettings().ui_address == DEFAULT_UI_URL
    assert (
        TrackingSettings(tracking_uri="http://mlflow.internal:8080/").ui_address
        == "http://mlflow.internal:8080"
    )
    settings = dataclasses.replace(tracking, ui_url="https://mlflow.example.org/")
    tracker = Tracker(settings)
    run_id = tracker.start_run("a run")
    assert tracker.run_url(run_id) == (
        f"https://mlflow.example.org/#/experiments/{tracker.experiment_id()}/runs/{run_id}"
        "?workflowType=machine_learning"
    )
    with pytest.raises(ValueError, match="ui_url.*http"):
        TrackingSettings(ui_url="mlflow.example.org")


def test_the_experiment_opens_on_training_runs_in_the_ui(tracking):
    tracker = Tracker(tracking)
    experiment = tracker.client.get_experiment(tracker.experiment_id())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


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
