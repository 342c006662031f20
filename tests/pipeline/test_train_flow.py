"""The train flow end to end with real Prefect runs and a real MLflow store."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import COMBINERS, evaluate_classification
from ensemble.model.member_model import load_member_model
from ensemble.predictor import EnsemblePredictor
from flows.train import train_flow
from tests.pipeline.helpers import EPOCHS, MEMBERS, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_train_flow_logs_members_lr_metrics_and_registers_champion(tmp_path, tracking):
    config = tiny_config(tmp_path)
    result = train_flow(config, tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == MEMBERS
    assert sorted(run.data.params["member"] for run in children) == [str(n) for n in range(MEMBERS)]
    for run in children:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == EPOCHS
        assert len(client.get_metric_history(run.info.run_id, "snapshot/val_loss")) == EPOCHS  # one per cycle

    prepared = PreparedData.load(next((tmp_path / "outputs" / "data").iterdir()))
    steps_per_epoch = len(prepared.y_train) // 4
    lr = client.get_metric_history(parent.info.run_id, "schedule/lr")
    assert sorted(m.step for m in lr) == list(range(1, EPOCHS * steps_per_epoch + 1))  # one value per step
    assert max(m.value for m in lr) == pytest.approx(0.02)

    for key in (
        "test/accuracy",
        "test/nll",
        "test/brier",
        "test/ece",
        "test/disagreement",
        "test/oracle_accuracy",
    ):
        assert key in parent.data.metrics
    assert parent.data.metrics["test/accuracy"] > 0.8
    assert parent.data.metrics["test/num_members"] == MEMBERS * EPOCHS  # N members x M snapshots
    assert len(parent.inputs.dataset_inputs) == 3  # train / val / test

    version = client.get_model_version_by_alias("test-ensemble", "champion")
    assert version.run_id == parent.info.run_id

    # The logged model is the parent run's output, READY, with the run's params and its test metrics.
    (output,) = parent.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert version.source == f"models:/{model.model_id}" and model.source_run_id == parent.info.run_id
    assert model.status.to_proto() == LoggedModelStatus.READY.to_proto()
    assert model.params["model.members"] == str(MEMBERS)
    model_metrics = {m.key: m.value for m in model.metrics}
    assert model_metrics["test/accuracy"] == parent.data.metrics["test/accuracy"]
    assert all(key.startswith("test/") for key in model_metrics)  # training curves stay on the run
    assert len(client.get_metric_history(parent.info.run_id, "test/accuracy")) == 1  # linked, not re-logged

    # The deployable predictor reproduces the logged test accuracy from raw rows.
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    raw = prepared.raw["test"]
    labels = predictor.predict(raw[prepared.feature_names])["label"].to_numpy()
    accuracy = float((labels == raw[prepared.preprocessor.target].to_numpy()).mean())
    assert accuracy == pytest.approx(parent.data.metrics["test/accuracy"])


def test_training_logs_the_curves_the_combiners_ensemble_accuracy_and_the_learning_rate_plot(
    tmp_path, tracking
):
    """... and `val/ensemble_accuracy` combines the members by `evaluation.combiner` (here geometric)."""
    result = train_flow(tiny_config(tmp_path, **{"evaluation.combiner": "geometric"}), tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(result["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(run.info.run_id for run in children) == sorted(result["member_run_ids"])
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == list(range(EPOCHS))
    ensemble_accuracy = client.get_metric_history(parent.info.run_id, "val/ensemble_accuracy")
    assert len(ensemble_accuracy) == EPOCHS
    prepared = PreparedData.load(next((tmp_path / "outputs" / "data").iterdir()))
    model = load_member_model(tmp_path / "outputs" / "runs" / result["run_id"] / "model.keras")
    log_probs = model.predict_members(prepared.x_val, log_probs=True)
    accuracy = {
        m: evaluate_classification(log_probs, prepared.y_val, method=m, log_probs=True)["accuracy"]
        for m in COMBINERS
    }
    assert accuracy["geometric"] != accuracy["mean"]  # these rows tell the combiners apart
    assert max(ensemble_accuracy, key=lambda m: m.step).value == pytest.approx(accuracy["geometric"])
    assert len(client.get_metric_history(parent.info.run_id, "schedule/lr")) > 0
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/learning_rate.parquet",
        "plots/learning_rate.png",
    ]


def test_worse_second_run_becomes_challenger_and_champion_stays(tmp_path, tracking):
    good = train_flow(tiny_config(tmp_path), tracking)
    worse = train_flow(
        tiny_config(tmp_path, **{"model.members": 1, "snapshots.lr_init": 1e-6, "snapshots.lr_min": 0.0}),
        tracking,
    )
    assert worse["metrics"]["accuracy"] < good["metrics"]["accuracy"]
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    assert client.get_model_version_by_alias("test-ensemble", "champion").run_id == good["run_id"]
    assert client.get_model_version_by_alias("test-ensemble", "challenger").run_id == worse["run_id"]
    assert worse["registration"]["alias"] == "challenger"


def test_flow_with_bad_data_marks_run_failed_and_registers_nothing(tmp_path, tracking):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1.0, float("nan"), 3.0, 4.0] * 5, "y": [0, 1] * 10}).to_csv(bad, index=False)
    config = tiny_config(tmp_path, **{"data.source": str(bad), "data.target": "y"})
    with pytest.raises(Exception, match="NaN"):
        train_flow(config, tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]
    with pytest.raises(MlflowException):
        client.get_registered_model("test-ensemble")


def test_growth_stage_widens_members_and_logs_the_round_table(tmp_path, tracking):
    config = tiny_config(
        tmp_path,
        **{
            "model.hidden_units": [2],
            "snapshots.enabled": False,
            "growth.enabled": True,
            "growth.epochs_per_round": 2,
            "growth.max_rounds": 2,
            "growth.patience": 1,
            "growth.stop_without_gain": False,  # both splits, whatever a round gains
        },
    )
    result = train_flow(config, tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    widths = [m.value for m in client.get_metric_history(result["run_id"], "growth/width")]
    assert widths == [2, 4, 8]  # "all" doubles the layer at each of the 2 splits
    before = client.get_metric_history(result["run_id"], "growth/val_before_split")
    after = client.get_metric_history(result["run_id"], "growth/val_after_split")
    for b, a in zip(before, after, strict=False):  # the split preserves the function
        assert a.value == pytest.approx(b.value, abs=1e-6)
    assert "growth_rounds.json" in [f.path for f in client.list_artifacts(result["run_id"])]
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert predictor.groups[0].hidden_units == [8]
