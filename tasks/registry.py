"""Prefect task of the registration step: log the pyfunc model and move the champion alias only on improvement."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.predictor import EnsemblePredictor
from tasks import pyfunc
from tasks.tracking import Tracker, TrackingSettings


@task(name="register-model", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_task(
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    predictor_dir: str,
    metric: str,
    value: float,
    higher_is_better: bool,
    model_name: str | None = None,
) -> dict:
    """Log the ensemble as an MLflow pyfunc (raw columns in; probabilities + label out) and register it.

    The new version gets the champion alias if its `test_<metric>` beats the current champion's (or there is
    none), else the challenger alias. Returns `{"name", "version", "alias", "model_uri", "champion_value"}`.
    """
    tracker = Tracker(settings)
    prepared = PreparedData.load(data_dir)
    example = input_example(prepared)
    output = EnsemblePredictor.load(predictor_dir).predict(example)
    model_uri = tracker.log_model(
        run_id, pyfunc.__file__, {pyfunc.PREDICTOR_ARTIFACT: predictor_dir}, example, output
    )
    registered = tracker.register(model_uri, run_id, metric, value, higher_is_better, name=model_name)
    return {**registered, "model_uri": model_uri}


def input_example(prepared: PreparedData, rows: int = 3) -> pd.DataFrame:
    """A few raw test rows (feature columns only, as a client would send them), as float64: the model's
    signature then declares double columns, which also accept integers (the reverse would reject floats)."""
    return prepared.raw["test"][prepared.feature_names].head(rows).reset_index(drop=True).astype("float64")
