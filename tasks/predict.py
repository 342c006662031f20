"""Prefect tasks of the `predict` flow: batch scoring of a CSV/Parquet file with a registered model alias."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from ensemble.data import DataError, check_output_table, read_table, write_table
from tasks.data import retry_unless_bad_input
from tasks.tracking import Tracker, TrackingSettings


@task(name="score-batch", retries=1, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_bad_input)
def score_batch_task(
    settings: TrackingSettings, input_path: str, output_path: str, alias: str, model_name: str | None = None
) -> dict:
    """Score every row of `input_path` with `models:/<name>@<alias>`; write the predictions as CSV or Parquet (by
    the extension of `output_path`).

    The output holds the model's columns (`proba_<class>`, `label` and the uncertainty columns, or `prediction`,
    `spread`, `lower`, `upper`: `tasks.pyfunc`), row for row,
    after the model's ID column (`data.id_column`) when the input has it.
    """
    frame = read_table(input_path)
    check_output_table(output_path)  # before the model loads
    tracker = Tracker(settings)
    model_name = tracker.model_name(model_name)  # no default name: the error lists the registered models
    model = tracker.load_model(alias, model_name)
    id_column = model.unwrap_python_model().predictor.preprocessor.id_column
    ids = frame.pop(id_column) if id_column in frame.columns else None  # not an input of the model's schema
    try:
        predictions = model.predict(frame)
    except MlflowException as error:  # the schema check: keep the reason, not the dump of every input row
        raise DataError(f"{input_path}: {str(error).rsplit('Error: ', 1)[-1].strip()}") from error
    if ids is not None:
        predictions.insert(0, id_column, ids.to_numpy())
    output = write_table(predictions, output_path)
    return {"rows": len(predictions), "output": str(output), "model_uri": f"models:/{model_name}@{alias}"}
