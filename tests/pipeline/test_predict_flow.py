"""The predict flow: batch scoring of CSV and Parquet files with the registered champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble.data import PreparedData
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
def test_predict_flow_scores_every_row_like_the_in_process_predictor(tmp_path, trained, suffix):
    _, settings, rows, predictor = trained
    source = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        rows.to_csv(source, index=False)
    else:
        rows.to_parquet(source, index=False)
    output = tmp_path / "scored" / "predictions.parquet"

    answer = predict_flow(str(source), str(output), "champion", None, settings)

    assert answer["rows"] == len(rows)
    assert answer["model_uri"] == "models:/test-ensemble@champion"
    scored = pd.read_parquet(output)
    expected = predictor.predict(rows)
    assert list(scored.columns) == ["proba_0", "proba_1", "proba_2", "label"]  # wine's classes are 0, 1, 2
    assert len(scored) == len(rows)
    proba = [c for c in scored.columns if c.startswith("proba_")]
    np.testing.assert_allclose(scored[proba].to_numpy(), expected[proba].to_numpy(), atol=1e-6)
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
