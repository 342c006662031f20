"""The predict flow: batch scoring of CSV and Parquet files with the registered champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ensemble.data import PreparedData, load_frame
from ensemble.predictor import EnsemblePredictor
from flows.predict import predict_flow
from flows.train import train_flow
from tests.pipeline.helpers import private_tracking, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, migrated_store, prefect_api):
    """One train_flow on a private store: `(result, settings, raw test rows (features only), predictor)`."""
    root = tmp_path_factory.mktemp("predict")
    settings = private_tracking(root, migrated_store)
    result = train_flow(tiny_config(root), settings)
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    rows = prepared.raw["test"][prepared.feature_names].reset_index(drop=True)
    return result, settings, rows, EnsemblePredictor.load(result["predictor_dir"])


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_predict_flow_scores_every_row_like_the_in_process_predictor_into_csv_or_parquet(
    tmp_path, trained, suffix
):
    _, settings, rows, predictor = trained
    source = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        rows.to_csv(source, index=False)
    else:
        rows.to_parquet(source, index=False)
    output = tmp_path / "scored" / f"predictions.{suffix}"  # written in the format its extension names

    answer = predict_flow(str(source), str(output), "champion", None, settings)

    assert answer["rows"] == len(rows)
    assert answer["model_uri"] == "models:/test-ensemble@champion"
    scored = pd.read_csv(output) if suffix == "csv" else pd.read_parquet(output)
    expected = predictor.predict(rows)
    uncertainty = ["predictive_entropy", "mean_member_entropy", "mutual_information", "disagreement"]
    assert list(scored.columns) == [
        "proba_0",
        "proba_1",
        "proba_2",
        "label",
        *uncertainty,
    ]  # wine: classes 0, 1, 2
    assert len(scored) == len(rows)
    proba = [c for c in scored.columns if c.startswith("proba_")]
    np.testing.assert_allclose(scored[proba].to_numpy(), expected[proba].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(scored[uncertainty].to_numpy(), expected[uncertainty].to_numpy(), atol=1e-6)
    assert (scored["mutual_information"] >= 0).all() and (scored["disagreement"].between(0, 1)).all()
    np.testing.assert_allclose(scored[proba].sum(axis=1), 1.0, atol=1e-5)
    assert scored["label"].tolist() == expected["label"].tolist()


def test_predict_flow_with_a_missing_column_fails_naming_it(tmp_path, trained):
    _, settings, rows, _ = trained
    missing = rows.columns[3]
    source = tmp_path / "rows.csv"
    rows.drop(columns=[missing]).to_csv(source, index=False)
    output = tmp_path / "predictions.parquet"
    with pytest.raises(Exception, match=missing):
        predict_flow(str(source), str(output), "champion", None, settings)
    assert not output.exists()


def test_predict_flow_with_an_unknown_alias_fails_naming_it(tmp_path, trained):
    _, settings, rows, _ = trained
    source = tmp_path / "rows.parquet"
    rows.to_parquet(source, index=False)
    with pytest.raises(Exception, match="nightly-best"):
        predict_flow(str(source), str(tmp_path / "out.parquet"), "nightly-best", None, settings)


def test_an_id_column_is_never_a_feature_and_is_kept_beside_the_batch_predictions(tmp_path, migrated_store):
    frame, _ = load_frame("wine")
    frame = frame.sort_values("target", kind="stable").reset_index(drop=True)
    frame.insert(
        0, "row", np.arange(len(frame), dtype="float64")
    )  # on a file sorted by class: leaks the label
    frame.insert(0, "name", [f"wine-{i}" for i in range(len(frame))])  # a string ID: no file edit needed
    source = tmp_path / "wine.csv"
    frame.to_csv(source, index=False)
    settings = private_tracking(tmp_path, migrated_store)
    config = tiny_config(
        tmp_path, **{"data.source": str(source), "data.target": "target", "data.id_column": "name"}
    )

    result = train_flow(config, settings)

    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert (
        "name" not in predictor.preprocessor.feature_names and "row" in predictor.preprocessor.feature_names
    )
    tags = MlflowClient(settings.tracking_uri).get_run(result["run_id"]).data.tags
    assert "'row'" in tags["data_warnings"] and "data.drop" in tags["data_warnings"]
    scored_rows = frame.drop(columns="target").sample(frac=1.0, random_state=0).head(20)
    scored_rows.to_csv(tmp_path / "batch.csv", index=False)
    predict_flow(str(tmp_path / "batch.csv"), str(tmp_path / "out.parquet"), "champion", None, settings)
    scored = pd.read_parquet(tmp_path / "out.parquet")
    # the ID column first, then the predictions and their uncertainty
    assert list(scored.columns)[:5] == ["name", "proba_0", "proba_1", "proba_2", "label"]
    assert scored["name"].tolist() == scored_rows["name"].tolist()
    expected = predictor.predict(scored_rows.reset_index(drop=True))
    pd.testing.assert_frame_equal(scored, expected, check_dtype=False, atol=1e-6)
