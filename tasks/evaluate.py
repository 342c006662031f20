"""Prefect task of the evaluation step: score the ensemble on the test split, log metrics, build the predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.flops import mlp_flops
from ensemble.fused import load_fused
from ensemble.metrics import evaluate_classification, evaluate_regression, member_metrics, rmse
from ensemble.predictor import EnsemblePredictor
from tasks.config import EvaluationSection
from tasks.tracking import Tracker, TrackingSettings

LOWER_IS_BETTER = {"nll", "brier", "ece", "rmse", "mae"}


def score(
    member_preds: np.ndarray, y: np.ndarray, task: str, evaluation: EvaluationSection
) -> dict[str, float]:
    """Ensemble metrics of member predictions `(K, B, C)` (or `(K, B)` for regression) against labels `(B,)`."""
    if task == "regression":
        return evaluate_regression(member_preds, y)
    return evaluate_classification(member_preds, y, method=evaluation.combiner, bins=evaluation.bins)


@task(name="evaluate", retries=1, cache_policy=NO_CACHE)
def evaluate_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    group_paths: list[str],
    evaluation: EvaluationSection,
    run_dir: str,
) -> dict:
    """Score the ensemble formed by all members of `group_paths` (final members and/or snapshots).

    Logs `test_<metric>` on the parent run, `test_accuracy`/`test_nll` (or `test_rmse`) per member run, a Prefect
    table artifact of members + ensemble, and saves the deployable predictor to `run_dir/predictor`.

    Returns `{"metrics", "predictor_dir", "metric", "value", "higher_is_better", "flops_per_sample"}`.
    """
    tracker = Tracker(settings)
    prepared = PreparedData.load(data_dir)
    groups = [load_fused(path) for path in group_paths]
    predictor = EnsemblePredictor(prepared.preprocessor, groups, combiner=evaluation.combiner)
    member_preds = np.concatenate([g.predict_members(prepared.x_test) for g in groups], axis=0)
    metrics = score(member_preds, prepared.y_test, prepared.task, evaluation)
    flops = sum(g.members * mlp_flops(g.input_dim, g.hidden_units, g.output_dim) for g in groups)
    metrics["flops_per_sample"] = float(flops)
    tracker.log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})

    final = groups[0]  # the trained members (or the first snapshot group); one row per member for the table
    rows = member_rows(
        final.predict_members(prepared.x_test), prepared.y_test, prepared.task, evaluation.bins
    )
    for row, member_run in zip(rows, member_run_ids, strict=False):
        tracker.log_metrics(member_run, {f"test_{k}": v for k, v in row.items() if k != "member"})
    table = [*rows, {"member": "ensemble", **{k: metrics.get(k) for k in rows[0] if k != "member"}}]
    create_table_artifact(
        table=_json_safe(table),
        key="ensemble-metrics",
        description="Test metrics of each member and of the ensemble",
    )
    create_markdown_artifact(
        markdown=f"MLflow run: [{run_id}]({tracker.run_url(run_id)})",
        key="mlflow-run",
        description="Where this flow run's parameters, metrics and model are tracked",
    )
    predictor_dir = predictor.save(Path(run_dir) / "predictor")
    metric = evaluation.metric
    return {
        "metrics": metrics,
        "predictor_dir": str(predictor_dir),
        "metric": metric,
        "value": metrics[metric],
        "higher_is_better": metric not in LOWER_IS_BETTER,
        "flops_per_sample": flops,
    }


def member_rows(member_preds: np.ndarray, y: np.ndarray, task: str, bins: int) -> list[dict]:
    if task == "regression":
        return [{"member": n, "rmse": rmse(pred, y)} for n, pred in enumerate(member_preds)]
    return member_metrics(member_preds, y, bins=bins)


def _json_safe(rows: list[dict]) -> list[dict]:
    """Rows with NaN/inf replaced by None (Prefect stores artifacts as JSON)."""
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
        for row in rows
    ]
