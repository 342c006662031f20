"""The registry never mixes models: a run registers under its data set's name by default, and a new version is
compared with the champion only when both have the same task and input schema and the champion has the gating
metric; otherwise no alias moves and the version and the run say why.

The versions here are registered in a real MLflow store from real runs; their sources name no logged model
(registration does not read it), which keeps these tests free of training.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from mlflow.tracking import MlflowClient

from tasks.config import RegistrySection
from tasks.registry import data_model_name, registered_model_name
from tasks.tracking import Tracker

WINE = {"task": "multiclass", "input_schema": json.dumps([["alcohol", "float64"], ["malic_acid", "float64"]])}
HOUSES = {"task": "regression", "input_schema": json.dumps([["rooms", "float64"], ["age", "float64"]])}


def register(
    tracker: Tracker, identity: dict, metric: str, value: float, higher: bool, name="shared"
) -> dict:
    """A run, then its (sourceless) version registered under `name`."""
    run_id = tracker.start_run("candidate")
    return tracker.register(f"runs:/{run_id}/model", run_id, metric, value, higher, name, identity)


def champion_version(tracking, name="shared") -> str:
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    return str(client.get_model_version_by_alias(name, "champion").version)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/data/wine.csv", "wine-ensemble"),
        ("digits", "digits-ensemble"),
        ("s3://bucket/sales/2024 Q1 (final).parquet", "2024-Q1-final-ensemble"),
        ("relative/houses.v2.pq", "houses.v2-ensemble"),
        ("/data/@@@.csv", "data-ensemble"),
    ],
)
def test_default_registered_name_comes_from_the_data_set(source, name):
    assert data_model_name(source) == name


def test_configured_name_beats_the_settings_name_which_beats_the_data_name(tracking):
    unnamed = dataclasses.replace(tracking, registered_model_name=None)
    assert registered_model_name(RegistrySection(), unnamed, "/data/wine.csv") == "wine-ensemble"
    assert registered_model_name(RegistrySection(), tracking, "/data/wine.csv") == "test-ensemble"
    named = RegistrySection(model_name="cellar")
    assert registered_model_name(named, tracking, "/data/wine.csv") == "cellar"


@pytest.mark.parametrize("bad", ["", "a/b", "models:x", "wine@champion"])
def test_a_configured_name_that_mlflow_cannot_address_is_rejected(bad):
    with pytest.raises(ValueError, match="registered model name must be non-empty without"):
        RegistrySection(model_name=bad)


def test_a_version_of_another_task_leaves_the_champion_and_says_why(tracking):
    tracker = Tracker(tracking)
    register(tracker, WINE, "accuracy", 0.9, True)
    registered = register(tracker, HOUSES, "rmse", 0.1, False)
    assert registered["alias"] is None
    assert "is a multiclass model, this one a regression model: not compared" in registered["reason"]
    assert champion_version(tracking) == "1"
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    version = client.get_model_version("shared", registered["version"])
    assert version.tags["not_compared"] == registered["reason"]
    assert (version.tags["task"], version.tags["input_schema"]) == (HOUSES["task"], HOUSES["input_schema"])
    assert version.aliases == []
    tags = client.get_run(version.run_id).data.tags
    assert (tags["registered_alias"], tags["registration_note"]) == ("none", registered["reason"])


def test_a_version_of_other_input_columns_leaves_the_champion_and_names_them(tracking):
    tracker = Tracker(tracking)
    register(tracker, WINE, "accuracy", 0.5, True)
    more_columns = {**WINE, "input_schema": json.dumps([["alcohol", "float64"], ["colour", "float64"]])}
    registered = register(tracker, more_columns, "accuracy", 0.99, True)
    assert registered["alias"] is None
    assert "only this version has ['colour']; only the champion has ['malic_acid']" in registered["reason"]
    assert champion_version(tracking) == "1"


def test_a_champion_without_the_gating_metric_is_kept_and_the_run_says_why(tracking):
    tracker = Tracker(tracking)
    register(tracker, WINE, "accuracy", 0.5, True)  # its run logged no test_brier either
    registered = register(tracker, WINE, "brier", 0.01, False)
    assert registered["alias"] is None
    assert "has no test_brier to compare with" in registered["reason"]
    assert champion_version(tracking) == "1"


def test_a_lower_rmse_of_the_same_task_and_schema_takes_the_champion_alias(tracking):
    tracker = Tracker(tracking)
    assert register(tracker, HOUSES, "rmse", 0.5, False)["alias"] == "champion"
    worse = register(tracker, HOUSES, "rmse", 0.7, False)
    assert (worse["alias"], worse["champion_value"], worse["reason"]) == ("challenger", 0.5, None)
    assert register(tracker, HOUSES, "rmse", 0.4, False)["alias"] == "champion"
    assert champion_version(tracking) == "3"


def test_reading_a_model_without_a_name_lists_the_registered_models(tracking):
    unnamed = Tracker(dataclasses.replace(tracking, registered_model_name=None))
    register(unnamed, WINE, "accuracy", 0.9, True, name="wine-ensemble")
    with pytest.raises(
        ValueError, match=r"--model-name NAME.*ENSEMBLE_REGISTERED_MODEL.*\['wine-ensemble'\]"
    ):
        unnamed.load_model("champion")
    assert unnamed.model_name("wine-ensemble") == "wine-ensemble"


def test_the_cli_summary_says_why_a_version_got_no_alias_and_how_to_serve_it():
    from flows.cli import summary

    reason = "the champion (version 1 of 'shared') is a multiclass model, this one a regression model: not compared"
    registration = {"name": "shared", "version": "2", "alias": None, "reason": reason}
    result = {
        "run_id": "r",
        "member_run_ids": [],
        "metrics": {"rmse": 0.5, "r2": 0.9},
        "registration": registration,
    }
    text = summary(result)
    assert f"registered shared version 2 without an alias: {reason}" in text
    assert 'mlflow models serve -m "models:/shared/2"' in text
    assert re.search(r"^ *test split +rmse +r2$", text, re.M)  # the closing table (`flows.cli.summary`)
    assert re.search(r"^ *ensemble +0\.5000 +0\.9000$", text, re.M)
