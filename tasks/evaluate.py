"""Prefect task of the evaluation step: score the ensemble on the test split, log metrics, build the predictor."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import (
    evaluate_classification,
    evaluate_regression,
    mae,
    member_metrics,
    r2,
    rmse,
)
from ensemble.model.fused import load_fused
from ensemble.predictor import EnsemblePredictor
from ensemble.snapshots.collector import Snapshots
from tasks.config import EvaluationSection
from tasks.tracking import TEST_PREFIX, Tracker, TrackingSettings

SNAPSHOT_TEST_PREFIX = "snapshot/test_"  # a member's snapshots' test scores (step = cycle)


def score(
    member_preds: np.ndarray, y: np.ndarray, task: str, evaluation: EvaluationSection
) -> dict[str, float]:
    """Ensemble metrics of member log-probabilities `(K, B, C)` (`predict_members(x, log_probs=True)`; or
    predictions `(K, B)` for regression) against labels `(B,)`."""
    if task == "regression":
        return evaluate_regression(member_preds, y)
    return evaluate_classification(
        member_preds, y, method=evaluation.combiner, bins=evaluation.bins, log_probs=True
    )


@dataclass(frozen=True)
class Evaluation:
    """The evaluation step's result: the ensemble's test scores and the predictor registration would package.

    Attributes:
        metrics: the ensemble's test metrics (`test/<metric>` on the parent run), `flops_per_sample` included.
        metric: the gating metric (`evaluation.metric`, resolved for the data's task).
        value: the registered predictor's test value of `metric`.
        higher_is_better: the direction of `metric`.
        predictor_dir: the saved predictor that registration packages.
        best_member: the member row (final weights) best on `metric`, or None.
        selection: a sweep's three ensembles' test scores (`tasks.selection`), None without a sweep.
    """

    metrics: dict[str, float]
    metric: str
    value: float
    higher_is_better: bool
    predictor_dir: str
    best_member: dict | None = None
    selection: dict | None = None


@task(name="evaluate", retries=1, cache_policy=NO_CACHE)
def evaluate_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    group_paths: list[str],
    evaluation: EvaluationSection,
    run_dir: str,
    model_path: str,
    snapshot_dir: str | None = None,
    close_members: bool = False,
) -> Evaluation:
    """Score the ensemble formed by all members of `group_paths` (final members and/or snapshots).

    Logs `test/<metric>` on the parent run; on member run n, `test/<metric>` of member n's final weights (the
    trained model at `model_path`) and, with `snapshot_dir`, `snapshot/test_<metric>` of each of its snapshots at
    `step` = cycle; a Prefect table artifact of every (member, cycle) and the ensemble; and saves the deployable
    predictor to `run_dir/predictor`. `evaluation.metric` None is resolved for the data's task.

    The member runs' metrics are written on a thread while the ensemble is scored and its predictor saved
    (TensorFlow, Prefect's API and file writes leave the interpreter to it); with `close_members` (nothing logs to
    the member runs after this task) each member run is then closed FINISHED there too, instead of at the end of
    the flow (`Tracker.run(..., nested="member")` closes those still open, or all of them FAILED if the flow fails).
    MLflow's asynchronous logging, which training used, is stopped on another thread (`Tracker.stop_async`).
    """
    tracker = Tracker(settings)
    prepared = PreparedData.load(data_dir)
    evaluation = evaluation.for_task(prepared.task)
    rows = member_table(prepared, evaluation, model_path, snapshot_dir)
    with ThreadPoolExecutor(2, thread_name_prefix="mlflow-members") as pool:
        # Training's live logging is written (flushed when training ended): its stop waits up to a second.
        stopped = pool.submit(tracker.stop_async)
        members = pool.submit(
            contextvars.copy_context().run, log_member_scores, tracker, member_run_ids, rows, close_members
        )
        scored = score_ensemble(tracker, run_id, prepared, evaluation, group_paths, rows, run_dir)
        members.result()  # raises a failed write
        stopped.result()
    return scored


def score_ensemble(
    tracker: Tracker,
    run_id: str,
    prepared: PreparedData,
    evaluation: EvaluationSection,
    group_paths: list[str],
    rows: list[dict],
    run_dir: str,
) -> Evaluation:
    """The ensemble of `group_paths` scored on the test split (`test/<metric>` on the parent run), the Prefect
    artifacts (`publish_scores`, with the member `rows`) and the predictor saved to `run_dir/predictor`."""
    groups = [load_fused(path) for path in group_paths]
    predictor = EnsemblePredictor(prepared.preprocessor, groups, combiner=evaluation.combiner)
    member_preds = predictor.pooled_members(prepared.x_test, log_probs=True)  # (K, B, C) / (K, B)
    metrics = score(member_preds, prepared.y_test, prepared.task, evaluation)
    flops = sum(g.forward_flops() for g in groups)
    metrics["flops_per_sample"] = float(flops)
    tracker.log_metrics(run_id, {f"{TEST_PREFIX}{k}": v for k, v in metrics.items()})
    publish_scores(rows, metrics, f"MLflow run: [{run_id}]({tracker.run_url(run_id)})")
    # The served prediction interval (regression): split-conformal on the validation rows.
    if prepared.task == "regression":
        predictor.calibrate_interval(prepared.x_val, prepared.y_val)
    predictor_dir = predictor.save(Path(run_dir) / "predictor")
    higher = evaluation.higher_is_better(prepared.task)
    finals = [row for row in rows if row["cycle"] == FINAL and row.get(evaluation.metric) is not None]
    best = (max if higher else min)(finals, key=lambda row: row[evaluation.metric], default=None)
    return Evaluation(
        metrics=metrics,
        metric=evaluation.metric,
        value=metrics[evaluation.metric],
        higher_is_better=higher,
        predictor_dir=str(predictor_dir),
        best_member=_json_safe([best])[0] if best else None,
    )


def publish_scores(rows: list[dict], metrics: dict[str, float], link: str) -> None:
    """The flow run's `ensemble-metrics` table (every member row, then the ensemble) and `mlflow-run` (`link`)
    artifacts."""
    ensemble = {"member": "ensemble", "cycle": None, **{k: metrics.get(k) for k in rows[0] if k in metrics}}
    create_table_artifact(
        table=_json_safe([*rows, ensemble]),
        key="ensemble-metrics",
        description="Test metrics of each member's final weights (cycle 'final'), of each snapshot (member, "
        "cycle) and of the ensemble",
    )
    create_markdown_artifact(
        markdown=link,
        key="mlflow-run",
        description="Where this flow run's parameters, metrics and model are tracked (mlflow.yaml's `ui_url`)",
    )


FINAL = "final"
"""The `cycle` of a member's final weights in the table (the trained, or grown, model)."""


def member_table(
    prepared: PreparedData, evaluation: EvaluationSection, model_path: str, snapshot_dir: str | None
) -> list[dict]:
    """Test scores of every member's snapshots and final weights: rows `{"member", "cycle", <metric>: ...}`,
    sorted by member, its cycles in order and then its final weights (`cycle` = `FINAL`)."""
    final = load_fused(model_path).predict_members(prepared.x_test, log_probs=True)  # (N, B, C) or (N, B)
    rows = [
        {"member": n, "cycle": FINAL, **s}
        for n, s in enumerate(member_scores(final, prepared.y_test, prepared.task, evaluation.bins))
    ]
    if snapshot_dir is not None:
        snapshots = Snapshots.load(snapshot_dir)
        preds = snapshots.predict_members(
            prepared.x_test, log_probs=True
        )  # (K, B, C) or (K, B), `keys()` order
        scores = member_scores(preds, prepared.y_test, prepared.task, evaluation.bins)
        rows += [{"member": m, "cycle": c, **s} for (m, c), s in zip(snapshots.keys(), scores, strict=True)]
    return sorted(
        rows, key=lambda row: (row["member"], (1, 0) if row["cycle"] == FINAL else (0, row["cycle"]))
    )


def member_scores(member_preds: np.ndarray, y: np.ndarray, task: str, bins: int) -> list[dict[str, float]]:
    """Test metrics of each of K models, from log-probabilities `(K, B, C)` (or predictions `(K, B)` for
    regression): accuracy, nll, brier and ece, or rmse, mae and r2."""
    if task == "regression":
        return [{"rmse": rmse(p, y), "mae": mae(p, y), "r2": r2(p, y)} for p in member_preds]
    rows = member_metrics(member_preds, y, bins=bins, log_probs=True)
    return [{k: v for k, v in row.items() if k != "member"} for row in rows]


def log_member_scores(
    tracker: Tracker, member_run_ids: list[str], rows: list[dict], close: bool = False
) -> None:
    """Member run n gets `test/<metric>` of its final weights (step 0) and `snapshot/test_<metric>` of each
    snapshot (`step` = cycle), and with `close` is then closed FINISHED. Nothing is logged for untracked members
    (no run ids)."""
    if not member_run_ids:
        return
    steps: dict[int, dict[int, dict[str, float]]] = {n: {} for n in range(len(member_run_ids))}
    for row in rows:
        values = {k: v for k, v in row.items() if k not in ("member", "cycle")}
        prefix, step = (TEST_PREFIX, 0) if row["cycle"] == FINAL else (SNAPSHOT_TEST_PREFIX, row["cycle"])
        steps[row["member"]].setdefault(step, {}).update({prefix + k: v for k, v in values.items()})
    for n, member_run in enumerate(member_run_ids):
        tracker.log_metrics_at_steps(member_run, steps[n])
        if close:
            tracker.finish_run(member_run)


def _json_safe(rows: list[dict]) -> list[dict]:
    """Rows with NaN/inf replaced by None (Prefect stores artifacts as JSON)."""
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
        for row in rows
    ]
