"""A sweep through the train flow: one fused run of 4 configurations, each member run carrying its own
hyper-parameters, the ensemble selection logged on the parent and the selected, weighted ensemble registered."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ensemble.data import PreparedData
from ensemble.evaluation.selection import (
    PREFER_UNIFORM_STANDARD_ERRORS,
    bagged_selection,
    cross_validated_choice,
    selection_candidates,
)
from ensemble.predictor import EnsemblePredictor
from flows.train import train_flow
from tests.pipeline.helpers import EPOCHS, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")

SWEEP = {
    "model.members": 4,
    "sweep.learning_rate": [0.005, 0.02],
    "sweep.weight_decay": [0.0, 1e-3],
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, migrated_store, prefect_api):
    from tests.pipeline.helpers import private_tracking

    root = tmp_path_factory.mktemp("sweep")
    settings = private_tracking(root, migrated_store)
    result = train_flow(tiny_config(root, **SWEEP), settings)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    return result, client, prepared


def test_each_member_run_carries_its_configurations_hyper_parameters(swept):
    result, client, _ = swept
    params = {}
    for run_id in result["member_run_ids"]:
        run = client.get_run(run_id)
        params[int(run.data.params["member"])] = run.data.params
    assert [(p["learning_rate"], p["weight_decay"]) for _, p in sorted(params.items())] == [
        ("0.005", "0.0"),
        ("0.005", "0.001"),
        ("0.02", "0.0"),
        ("0.02", "0.001"),
    ]
    assert [params[n]["configuration"] for n in range(4)] == ["0", "1", "2", "3"]


def test_parent_logs_the_selection_curve_and_three_ensembles_test_scores(swept):
    result, client, _ = swept
    parent = client.get_run(result["run_id"])
    for name in ("selected", "uniform", "best_configuration"):
        for metric in ("nll", "accuracy", "brier"):
            assert f"selection/{name}_test_{metric}" in parent.data.metrics
    curve = client.get_metric_history(result["run_id"], "selection/val_nll")
    assert len(curve) >= 20 and sorted(m.step for m in curve) == list(range(len(curve)))
    assert parent.data.params["selection/best_configuration.configuration"] in {"0", "1", "2", "3"}
    assert parent.data.params["selection/metric"] == "nll"


def test_registered_predictor_is_the_selection_with_its_logged_weights(swept, tmp_path):
    result, client, prepared = swept
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert predictor.num_members == 4 * EPOCHS  # 4 members x 2 snapshots, the library of the selection
    path = client.download_artifacts(result["run_id"], "selection.json", str(tmp_path))
    with open(path) as file:
        table = json.load(file)
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    np.testing.assert_allclose(predictor.weights, [row["weight"] for row in rows])
    assert (
        sum(row["count"] > 0 for row in rows) >= 1
    )  # the plain greedy run's picks, beside the bagged weights
    member_weights = [
        client.get_run(r).data.metrics["selection/weight"] for r in result["member_run_ids"]
    ]  # its models' weights, summed per member
    assert sum(member_weights) == pytest.approx(1.0)

    # The registered weights are the 5-fold cross-validated choice between the bagged selection (20 bags of half
    # the models, sorted initialisation), the uniform ensemble and the best configuration, refitted on validation,
    # the uniform ensemble kept unless another beats it by more than the default margin.
    val = np.concatenate([g.predict_members(prepared.x_val, log_probs=True) for g in predictor.groups])
    groups = [row["configuration"] for row in rows]
    choice = cross_validated_choice(
        val,
        prepared.y_val,
        selection_candidates(20, "nll", "mean", groups),
        "nll",
        folds=5,
        prefer="uniform",
        standard_errors=PREFER_UNIFORM_STANDARD_ERRORS,
    )
    np.testing.assert_allclose(predictor.weights, choice.weights, atol=1e-9)
    parent_run = client.get_run(result["run_id"]).data
    assert parent_run.params["selection/chosen"] == choice.chosen
    for name, score in choice.scores.items():
        assert parent_run.metrics[f"selection/cv_nll/{name}"] == pytest.approx(score)
    assert set(choice.z_scores) == {"selection", "best_configuration"}
    for name, z in choice.z_scores.items():  # a non-finite z is not logged, as no non-finite metric is
        if np.isfinite(z):
            assert parent_run.metrics[f"selection/cv_z/{name}"] == pytest.approx(z)
        else:
            assert f"selection/cv_z/{name}" not in parent_run.metrics
    if choice.chosen == "selection":
        bagged = bagged_selection(val, prepared.y_val, "nll", 20, sorted_init=True)
        np.testing.assert_allclose(predictor.weights, bagged.weights, atol=1e-9)
    curve = client.get_metric_history(result["run_id"], "selection/bagged_val_nll")
    assert len(curve) == 20

    version = client.get_model_version_by_alias("test-ensemble", "champion")
    assert version.run_id == result["run_id"]
    # The logged model's evaluation is the selection's, not the uniform ensemble's `test/*` of the same run.
    run = client.get_run(result["run_id"])
    (output,) = run.outputs.model_outputs
    model_metrics = {m.key: m.value for m in client.get_logged_model(output.model_id).metrics}
    parent = run.data.metrics
    assert model_metrics and all(key.startswith("selection/selected_test_") for key in model_metrics)
    assert model_metrics["selection/selected_test_nll"] == parent["selection/selected_test_nll"]


def test_a_regression_sweep_registers_a_selection_that_answers_with_a_conformal_interval(
    tmp_path, tracking, prefect_api
):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(240, 3)), columns=["x0", "x1", "x2"])
    frame["y"] = 2 * frame["x0"] - frame["x1"] + 0.3 * rng.normal(size=240)
    frame.to_csv(tmp_path / "houses.csv", index=False)
    config = tiny_config(
        tmp_path, **SWEEP, **{"data.source": str(tmp_path / "houses.csv"), "data.target": "y"}
    )
    result = train_flow(config, tracking)

    parent = MlflowClient(tracking.tracking_uri, tracking.tracking_uri).get_run(result["run_id"])
    assert {"selection/selected_test_rmse", "selection/uniform_test_rmse"} <= set(parent.data.metrics)
    assert parent.data.params["selection/metric"] == "rmse"
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    prepared = PreparedData.load(next((tmp_path / "outputs" / "data").iterdir()))
    answer = predictor.predict(prepared.raw["test"][prepared.feature_names])
    assert list(answer.columns) == ["prediction", "spread", "lower", "upper"]
    half = predictor.interval_half_width
    np.testing.assert_allclose(answer["upper"] - answer["prediction"], half)
    val_mean, _ = predictor.combine_members(
        np.concatenate([g.predict_members(prepared.x_val) for g in predictor.groups])
    )
    assert np.mean(np.abs(prepared.y_val - val_mean) <= half) >= 0.9  # split conformal on validation
