"""The `predict` flow: batch scoring of a CSV/Parquet file with a registered model alias, written as Parquet."""

from __future__ import annotations

from prefect import flow

from tasks.predict import score_batch_task
from tasks.tracking import TrackingSettings


@flow(name="predict", log_prints=True)
def predict_flow(
    input_path: str,
    output_path: str,
    alias: str = "champion",
    model_name: str | None = None,
    tracking: TrackingSettings | None = None,
) -> dict:
    """Score `input_path` with `models:/<model_name>@<alias>` and write `output_path` (Parquet)."""
    return score_batch_task(tracking or TrackingSettings.load(), input_path, output_path, alias, model_name)
