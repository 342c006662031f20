"""Prefect task of a sweep's selection step: choose the registered ensemble from the swept members on validation.

Greedy forward selection with replacement (Caruana et al. 2004; `ensemble.evaluation.selection`) from a sorted
initialisation (the best k models on validation, k chosen on validation), bagged over random halves of the models
unless `sweep.selection_bags` is 0, over the evaluated ensemble's members (each member's final weights, or its
snapshots), on `sweep.selection_metric` of the validation split. Beside it, two fixed ensembles: the uniform
ensemble of all members and the best single configuration (the configuration whose `repeats` members, averaged,
score best on validation). With `sweep.selection_folds: F` (default 5) the registered ensemble is whichever of the
three scores best in F-fold cross-validation over the validation rows (each fitted on F-1 folds, scored on the
held-out one, the winner refitted on all rows), so the selection is registered only where its choices hold up on
validation rows it did not fit; and the uniform ensemble stays unless the winner beats it by more than
`sweep.selection_standard_errors` (default 3) standard errors of their per-row held-out difference. All three are
scored on the test split.

Parent run: `selection/val_<metric>` at step = round (the greedy curve on all models), `selection/bagged_val_<metric>`
at step = bag (the average of bags 0..b), `selection/cv_<metric>/{selection,uniform,best_configuration}` (the
cross-validated scores), `selection/cv_z/{selection,best_configuration}` (each one's held-out row losses minus the
uniform ensemble's, in standard errors), `selection/{selected,uniform,best_configuration}_test_<metric>`,
`selection/members_chosen`, params `selection/best_configuration.*`, `selection/metric` and `selection/chosen`, the
table `selection.json` (every model with its member, cycle, configuration, hyper-parameters, validation score, greedy
count and registered weight). Member runs: `selection/weight` (the sum of its models' weights). The registered,
weighted predictor is the chosen ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import (
    accuracy,
    brier,
    expected_calibration_error,
    gaussian_nll,
    mae,
    nll,
    r2,
    rmse,
)
from ensemble.evaluation.selection import SweepSelection, check_metric, choose_ensemble, ensemble_loss
from ensemble.predictor import EnsemblePredictor
from ensemble.snapshots.collector import Snapshots
from ensemble.uncertainty import weighted_log_combine
from tasks.config import PipelineConfig
from tasks.evaluate import Evaluation
from tasks.live_logging import sweep_members
from tasks.tracking import Tracker, TrackingSettings
from tasks.trained import Trained

PREFIX = "selection/"
SELECTED_TEST_PREFIX = (
    f"{PREFIX}selected_test_"  # the registered selection's test scores (linked to its model)
)


def test_scores(
    predictor: EnsemblePredictor, preds: np.ndarray, y: np.ndarray, bins: int
) -> dict[str, float]:
    """Test metrics of `predictor`'s (weighted) combination of member predictions `(K, B, C)` log-probs / `(K, B)`."""
    if predictor.preprocessor.task == "regression":
        mean, spread = predictor.combine_members(preds)
        return {
            "rmse": rmse(mean, y),
            "mae": mae(mean, y),
            "r2": r2(mean, y),
            "gaussian_nll": gaussian_nll(mean, spread, y),
        }
    log_probs = weighted_log_combine(
        preds, predictor.weights, predictor.combiner
    )  # (B, C), exact in log space
    probs = np.exp(log_probs)
    return {
        "accuracy": accuracy(probs, y),
        "nll": nll(log_probs, y, log_probs=True),
        "brier": brier(probs, y),
        "ece": expected_calibration_error(probs, y, bins),
    }


def library_members(predictor: EnsemblePredictor, trained: Trained) -> list[tuple[int, int | str]]:
    """(member, cycle) of each of the predictor's pooled models: its snapshots (sorted by cycle, member, as
    `tasks.snapshots` stacks them) or each member's final weights (`cycle` "final").

    With snapshots the pool is the snapshots even when there are as many as members (`keep_best: 1`: each
    member's best cycle, sorted by cycle, so model k need not be member k)."""
    if trained.snapshot_dir:
        keys = Snapshots.load(trained.snapshot_dir).keys()
        if len(keys) == predictor.num_members:
            return list(keys)
    if predictor.num_members != trained.members:
        raise ValueError(
            f"Cannot tell which member each of the predictor's {predictor.num_members} models is "
            f"({trained.members} members trained)."
        )
    return [(n, "final") for n in range(trained.members)]


@dataclass(frozen=True)
class Selected:
    """The selection step's result, the fields of `tasks.evaluate.Evaluation` it replaces.

    Attributes:
        predictor_dir: the saved, weighted predictor of the registered ensemble.
        value: its test value of the gating metric `evaluation.metric` (what registration compares).
        selection: the test scores `{"selected", "uniform", "best_configuration": {metric: value}}`.
    """

    predictor_dir: str
    value: float
    selection: dict[str, dict[str, float]]


def weighted_ensembles(
    uniform: EnsemblePredictor, chosen: SweepSelection, prepared: PreparedData
) -> dict[str, EnsemblePredictor]:
    """The three ensembles scored on test: `selected` (the registered weights; a regression interval calibrated
    on validation), `uniform` and `best_configuration`."""
    selected = EnsemblePredictor(
        uniform.preprocessor, uniform.groups, uniform.combiner, chosen.weights, None, uniform.interval_level
    )
    if prepared.task == "regression":
        selected.calibrate_interval(prepared.x_val, prepared.y_val)
    one_hot = np.asarray(chosen.best_configuration)  # (K,) uniform over the best configuration's models
    best = EnsemblePredictor(uniform.preprocessor, uniform.groups, uniform.combiner, one_hot)
    return {"selected": selected, "uniform": uniform, "best_configuration": best}


def log_parent(
    tracker: Tracker,
    run_id: str,
    chosen: SweepSelection,
    scores: dict[str, dict[str, float]],
    best_hyper: dict,
) -> None:
    """The parent run's selection metrics, curves and params (see the module)."""
    prefix, metric = PREFIX, chosen.metric
    tracker.log_metrics(
        run_id,
        {f"{prefix}{name}_test_{k}": v for name, values in scores.items() for k, v in values.items()}
        | {
            f"{prefix}members_chosen": float(np.count_nonzero(chosen.weights)),
            f"{prefix}rounds_kept": float(chosen.greedy.best_round + 1),
        },
    )
    tracker.log_metrics_at_steps(
        run_id, {r: {f"{prefix}val_{metric}": v} for r, v in enumerate(chosen.greedy.curve)}
    )
    if chosen.bagged is not None:  # the average of bags 0..b
        curve = {b: {f"{prefix}bagged_val_{metric}": v} for b, v in enumerate(chosen.bagged.curve)}
        tracker.log_metrics_at_steps(run_id, curve)
    if chosen.choice is not None:
        tracker.log_metrics(
            run_id,
            {f"{prefix}cv_{metric}/{n}": v for n, v in chosen.choice.scores.items()}
            | {f"{prefix}cv_z/{n}": v for n, v in chosen.choice.z_scores.items()},
        )
    tracker.log_params(
        run_id,
        {
            f"{prefix}best_configuration": best_hyper,
            f"{prefix}metric": metric,
            f"{prefix}chosen": chosen.chosen,
        },
    )


def selection_rows(
    keys: list[tuple[int, int | str]],
    configurations: list[dict],
    chosen: SweepSelection,
    val: np.ndarray,
    y_val: np.ndarray,
    combiner: str,
) -> list[dict]:
    """`selection.json`: each pooled model (`keys[k]` = its member and cycle) with its configuration and
    hyper-parameters, its own validation loss, its greedy count and its registered weight."""
    metric, weights = chosen.metric, chosen.weights
    return [
        {
            "model": k,
            "member": m,
            "cycle": str(c),
            **{key: v for key, v in configurations[m].items() if key != "lr_scale"},
            f"val_{metric}": ensemble_loss(val[[k]], [1.0], y_val, metric, combiner),
            "count": chosen.greedy.counts[k],
            "weight": float(weights[k]),
        }
        for k, (m, c) in enumerate(keys)
    ]


def best_hyper_parameters(
    keys: list[tuple[int, int | str]], configurations: list[dict], chosen: SweepSelection
) -> dict:
    """The best configuration's hyper-parameters (those of its first model's member, without the repeat)."""
    first = int(np.flatnonzero(chosen.best_configuration)[0])  # a model of the best configuration
    return {k: v for k, v in configurations[keys[first][0]].items() if k not in ("repeat", "lr_scale")}


@task(name="select-ensemble", retries=1, cache_policy=NO_CACHE)
def select_ensemble_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    evaluation: Evaluation,
    trained: Trained,
    config: PipelineConfig,
    run_dir: str,
) -> Selected:
    """Select, score and log (see the module); save the selected predictor to `run_dir/selected_predictor`."""
    tracker, sweep = Tracker(settings), config.sweep
    prepared = PreparedData.load(data_dir)
    uniform = EnsemblePredictor.load(evaluation.predictor_dir)
    metric = check_metric(sweep.selection_metric, prepared.task)
    # Every pooled model's predictions: log-probabilities (K, B, C), or (K, B) for regression.
    val, test = (uniform.pooled_members(x, log_probs=True) for x in (prepared.x_val, prepared.x_test))
    keys = library_members(uniform, trained)
    configurations = sweep_members(sweep, config.optimizer, config.snapshots, config.train)
    groups = [configurations[member]["configuration"] for member, _ in keys]  # each model's configuration
    chosen = choose_ensemble(
        val,
        prepared.y_val,
        groups,
        metric,
        sweep.selection_bags,
        sweep.selection_folds,
        uniform.combiner,
        sweep.selection_standard_errors,
    )
    ensembles = weighted_ensembles(uniform, chosen, prepared)
    bins = config.evaluation.bins
    scores = {name: test_scores(p, test, prepared.y_test, bins) for name, p in ensembles.items()}
    log_parent(tracker, run_id, chosen, scores, best_hyper_parameters(keys, configurations, chosen))
    rows = selection_rows(keys, configurations, chosen, val, prepared.y_val, uniform.combiner)
    tracker.log_table(run_id, rows, "selection.json")
    member_weight = np.bincount([m for m, _ in keys], weights=chosen.weights, minlength=trained.members)
    for n, member_run in enumerate(member_run_ids):
        tracker.log_metrics(member_run, {f"{PREFIX}weight": float(member_weight[n])})
    get_run_logger().info(
        f"Ensemble selection on validation {metric} ({sweep.selection_bags or 'no'} bags; registered: "
        f"{chosen.chosen}, {sweep.selection_folds or 'no'} folds): {np.count_nonzero(chosen.weights)} of "
        f"{len(keys)} models weighted; test {metric}: "
        + ", ".join(f"{name} {values[metric]:.4f}" for name, values in scores.items())
    )
    predictor_dir = ensembles["selected"].save(Path(run_dir) / "selected_predictor")
    value = scores["selected"].get(evaluation.metric, evaluation.value)
    return Selected(str(predictor_dir), value, scores)
