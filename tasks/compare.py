"""Prefect tasks of the `compare` flow: the ensemble, a single member-sized model and a single large model of
equal FLOPs, each trained on the same data and logged as its own MLflow run tagged for the UI's compare view."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.evaluation.compare import CompareConfig, rows_to_markdown, run_comparison
from ensemble.evaluation.plots import plot_accuracy_vs_flops
from ensemble.model.flops import ensemble_flops, equal_flops_width
from ensemble.model.fused import FusedMLP
from ensemble.training.train import fit
from tasks.config import EvaluationSection, ModelSection, OptimizerSection, TrainSection
from tasks.describe import compare_verdict, table_markdown
from tasks.evaluate import score
from tasks.factories import build_optimizer, train_config
from tasks.tracking import TEST_PREFIX, Tracker, TrackingSettings


@task(name="plan-candidates", cache_policy=NO_CACHE)
def plan_candidates_task(data_dir: str, model: ModelSection) -> list[dict]:
    """`[ensemble, single, equal_flops_single]` as `{"kind", "members", "hidden_units"}`.

    The equal-FLOPs single model has the ensemble's depth and the largest uniform width whose forward FLOPs per
    sample do not exceed the whole ensemble's.
    """
    prepared = PreparedData.load(data_dir)
    d, out, depth = prepared.num_features, prepared.num_outputs, len(model.hidden_units)
    budget = ensemble_flops(d, model.hidden_units, out, model.members)
    width = equal_flops_width(d, depth, out, budget)
    return [
        {"kind": "ensemble", "members": model.members, "hidden_units": list(model.hidden_units)},
        {"kind": "single", "members": 1, "hidden_units": list(model.hidden_units)},
        {"kind": "equal_flops_single", "members": 1, "hidden_units": [width] * depth},
    ]


@task(name="train-candidate", retries=1, cache_policy=NO_CACHE)
def candidate_task(
    settings: TrackingSettings,
    parent_run_id: str,
    data_dir: str,
    candidate: dict,
    model: ModelSection,
    optimizer: OptimizerSection,
    train: TrainSection,
    evaluation: EvaluationSection,
) -> dict:
    """Train one candidate with the fused engine (constant learning rate) and log it as a child run.

    Tags: `kind` (ensemble / single / equal_flops_single) and `comparison` (the parent run id), so filtering the
    MLflow UI on `tags.comparison` lines the candidates up. Returns the row `{kind, members, width, flops, ...}`.
    """
    tracker = Tracker(settings)
    label = f"{candidate['kind']}-{candidate['members']}x{'-'.join(map(str, candidate['hidden_units']))}"
    tags = {"kind": candidate["kind"], "comparison": parent_run_id}
    with tracker.run(tracker.start_run(label, tags=tags, parent_run_id=parent_run_id)) as run_id:
        prepared = PreparedData.load(data_dir)
        fused = candidate_model(prepared, candidate, model)
        flops = fused.forward_flops()
        tracker.log_params(
            run_id,
            {
                **candidate,
                "width": max(candidate["hidden_units"]),
                "flops_per_sample": flops,
                "params_count": fused.count_params(),
                "epochs": train.epochs,
            },
        )
        seconds = fit_candidate(fused, prepared, optimizer, train)
        member_preds = fused.predict_members(prepared.x_test, log_probs=True)  # (N, B, C) or (N, B)
        metrics = score(member_preds, prepared.y_test, prepared.task, evaluation)
        tracker.log_metrics(
            run_id,
            {
                **{f"{TEST_PREFIX}{k}": v for k, v in metrics.items()},
                "cost/flops_per_sample": flops,
                "cost/train_seconds": seconds,
            },
        )
    return {
        "kind": candidate["kind"],
        "members": fused.members,
        "width": max(fused.hidden_units),
        "flops": flops,
        "run_id": run_id,
        **metrics,
    }


def candidate_model(prepared: PreparedData, candidate: dict, model: ModelSection) -> FusedMLP:
    """The untrained candidate: `candidate["members"]` members of `candidate["hidden_units"]`, with the
    ensemble's activation and seed."""
    return FusedMLP(
        candidate["members"],
        prepared.num_features,
        candidate["hidden_units"],
        task=prepared.task,
        num_classes=max(prepared.num_classes, 2),
        activation=model.activation,
        seed=model.seed,
    )


def fit_candidate(
    fused: FusedMLP, prepared: PreparedData, optimizer: OptimizerSection, train: TrainSection
) -> float:
    """Train `fused` in place on the training split (constant learning rate, no per-epoch metrics); returns the
    seconds it took."""
    start = time.perf_counter()
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    fit(
        fused,
        prepared.x_train,
        prepared.y_train,
        optimizer=build_optimizer(optimizer, None, steps_per_epoch),
        config=train_config(train, train_metrics=False),
    )
    return time.perf_counter() - start


SUMMARY_COLUMNS = [
    "kind",
    "members",
    "width",
    "flops",
    "accuracy",
    "nll",
    "ece",
    "rmse",
    "mae",
    "r2",
    "run_id",
]


@task(name="summarize-comparison", cache_policy=NO_CACHE)
def summarize_comparison_task(
    settings: TrackingSettings, run_id: str, rows: list[dict], run_dir: str
) -> dict:
    """The compare parent's summary: the candidates' table as artifacts (`comparison/comparison.json`, a table in
    the UI, and `comparison/comparison.md`), summary metrics (`compare/<kind>_<metric>` and the ensemble's gain
    over each single model, `compare/gain_vs_<kind>`), a one-line `verdict` tag and a description (verdict +
    table). Returns `{"verdict", "metric", "markdown"}`."""
    metric, higher = ("accuracy", True) if "accuracy" in rows[0] else ("rmse", False)
    columns = [c for c in SUMMARY_COLUMNS if any(c in row for row in rows)]
    table = [{c: row.get(c) for c in columns} for row in rows]
    verdict = compare_verdict(rows, metric, higher)
    tracker = Tracker(settings)
    tracker.log_table(run_id, table, "comparison/comparison.json")
    markdown = f"**{verdict}**\n\n{table_markdown(table, columns)}"
    path = Path(run_dir) / "comparison.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown + "\n")
    tracker.log_artifact(run_id, path, "comparison")
    values = {row["kind"]: row[metric] for row in rows if row.get(metric) is not None}
    summary = {f"compare/{kind}_{metric}": value for kind, value in values.items()}
    if "ensemble" in values:
        sign = 1.0 if higher else -1.0
        summary |= {
            f"compare/gain_vs_{kind}": sign * (values["ensemble"] - value)
            for kind, value in values.items()
            if kind != "ensemble"
        }
    tracker.log_metrics(run_id, summary)
    tracker.set_tags(run_id, {"verdict": verdict})
    tracker.describe_run(run_id, markdown)
    return {"verdict": verdict, "metric": metric, "markdown": markdown}


@task(name="comparison-grid", cache_policy=NO_CACHE)
def grid_task(settings: TrackingSettings, run_id: str, data_dir: str, grid: dict, run_dir: str) -> list[dict]:
    """Kondratyuk-style grid (`ensemble.evaluation.compare.run_comparison`): widths x members + equal-FLOPs singles."""
    rows = run_comparison(PreparedData.load(data_dir), CompareConfig(**grid))
    tracker = Tracker(settings)
    tracker.log_table(
        run_id,
        [{k: (str(v) if k == "matches" else v) for k, v in r.items()} for r in rows],
        "comparison_grid.json",
    )
    path = Path(run_dir) / "comparison_grid.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rows_to_markdown(rows))
    tracker.log_artifact(run_id, path, "comparison")
    return rows


@task(name="plot-comparison", cache_policy=NO_CACHE)
def plot_comparison_task(settings: TrackingSettings, run_id: str, rows: list[dict], run_dir: str) -> str:
    """Accuracy vs FLOPs per sample (log x), one curve per width; logged to the parent run."""
    png = plot_accuracy_vs_flops(rows, Path(run_dir) / "accuracy_vs_flops.png")
    Tracker(settings).log_artifact(run_id, png, "plots")
    return str(png)
