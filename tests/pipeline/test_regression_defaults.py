"""Defaults follow the task: an inferred regression task gates on rmse (lower is better) and reports r2 and mae;
and, with no name configured anywhere, each data set registers under its own name and keeps its own champion."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from ensemble.data import PreparedData
from flows.train import train_flow
from tasks.config import EvaluationSection, load_config
from tests.pipeline.helpers import private_tracking, tiny_config


@pytest.mark.parametrize(
    ("task", "metric", "higher_is_better"),
    [("regression", "rmse", False), ("binary", "accuracy", True), ("multiclass", "accuracy", True)],
)
def test_an_unset_metric_follows_the_task(task, metric, higher_is_better):
    evaluation = load_config().evaluation
    assert evaluation.metric is None
    assert evaluation.for_task(task).metric == metric
    assert evaluation.higher_is_better(task) is higher_is_better


def test_a_set_metric_is_kept_with_its_direction():
    assert EvaluationSection(metric="r2").for_task("regression").metric == "r2"
    assert EvaluationSection(metric="r2").higher_is_better("regression") is True
    assert EvaluationSection(metric="mae").higher_is_better("regression") is False
    with pytest.raises(
        ValueError, match=r"'r2' is a regression metric but the data is a binary task; use accuracy"
    ):
        EvaluationSection(metric="r2").for_task("binary")


def test_an_unknown_metric_is_rejected_naming_the_known_ones():
    with pytest.raises(ValidationError, match=r"unknown metric 'f1'; use one of \['accuracy', .*'r2'\]"):
        load_config(overrides={"evaluation.metric": "f1"})


def houses_csv(path) -> str:
    """240 rows of y = 2 x0 - x1 + noise (continuous, so the task is inferred as regression)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3))
    y = 2 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=240)
    pd.DataFrame({"rooms": x[:, 0], "age": x[:, 1], "noise": x[:, 2], "price": y}).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def two_data_sets(tmp_path_factory, migrated_store, prefect_api):
    """A wine classifier, then a regression on houses.csv with the default evaluation, in one store where no
    registered name is configured: `(settings, wine result, houses result, houses root)`."""
    root = tmp_path_factory.mktemp("two-data-sets")
    settings = dataclasses.replace(private_tracking(root, migrated_store), registered_model_name=None)
    wine = train_flow(tiny_config(root / "wine", **{"train.epochs": 1}), settings)
    source = houses_csv(root / "houses.csv")
    houses = train_flow(
        tiny_config(root / "houses", **{"data.source": source, "data.target": "price"}), settings
    )
    return settings, wine, houses, root / "houses"


def test_a_regression_with_the_default_config_gates_on_rmse_and_reports_r2_and_mae(two_data_sets):
    settings, _, houses, root = two_data_sets
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    parent = client.get_run(houses["run_id"])
    assert parent.info.status == "FINISHED"
    for key in ("test/rmse", "test/mae", "test/r2"):
        assert key in parent.data.metrics
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    rmse = parent.data.metrics["test/rmse"]
    assert parent.data.metrics["test/r2"] == pytest.approx(1 - rmse**2 / np.var(prepared.y_test), rel=1e-5)
    version = client.get_model_version("houses-ensemble", houses["registration"]["version"])
    assert (version.tags["gating_metric"], version.tags["test_rmse"]) == ("rmse", str(rmse))
    for member_run in houses["member_run_ids"]:
        assert {"test/rmse", "test/mae", "test/r2"} <= set(client.get_run(member_run).data.metrics)


def test_each_data_set_registers_under_its_own_name_and_keeps_its_champion(two_data_sets):
    settings, wine, houses, _ = two_data_sets
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    assert (wine["registration"]["name"], wine["registration"]["alias"]) == ("wine-ensemble", "champion")
    assert (houses["registration"]["name"], houses["registration"]["alias"]) == (
        "houses-ensemble",
        "champion",
    )
    wine_champion = client.get_model_version_by_alias("wine-ensemble", "champion")
    assert wine_champion.run_id == wine["run_id"]
    assert wine_champion.tags["task"] == "multiclass"
    houses_champion = client.get_model_version_by_alias("houses-ensemble", "champion")
    assert houses_champion.tags["task"] == "regression"
    assert [column for column, _ in json.loads(houses_champion.tags["input_schema"])] == [
        "rooms",
        "age",
        "noise",
    ]
