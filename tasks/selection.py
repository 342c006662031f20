"""Prefect task of a sweep's selection step: choose the registered ensemble from the swept members on validation.

Greedy forward selection with replacement (Caruana et al. 2004; `ensemble.selection`) from a sorted
initialisation (the best k models on validation, k chosen on validation), bagged over random halves of the models
unless `sweep.selection_bags` is 0, over the evaluated ensemble's members (each member's final weights, or its
snapshots), on `sweep.selection_metric` of the validation split. Beside it, two fixed ensembles: the uniform
ensemble of all members and the best single configuration (the configuration whose `repeats` members, averaged,
score best on validation). With `sweep.selection_folds: F` (default 5) the registered ensemble is whichever of the
three scores best in F-fold cross-validation over the validation rows (each fitted on F-1 folds, scored on the
held-out one, the winner refitted on all rows), so the selection is registered only where its choices hold up on
validation rows it did not fit; all three are scored on the test split.

Parent run: `selection/val_<metric>` at step = round (the greedy curve on all models), `selection/bagged_val_<metric>`
at step = bag (the average of bags 0..b), `selection/cv_<metric>/{selection,uniform,best_configuration}` (the
cross-validated scores), `selection/{selected,uniform,best_configuration}_test_<metric>`,
`selection/members_chosen`, params `selection/best_configuration.*`, `selection/metric` and `selection/chosen`, the
table `selection.json` (every model with its member, cycle, configuration, hyper-parameters, validation score, greedy
count and registered weight). Member runs: `selection/weight` (the sum of its models' weights). The registered,
weighted predictor is the chosen ensemble.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.metrics import accuracy, brier, expected_calibration_error, gaussian_nll, mae, nll, r2, rmse
from ensemble.predictor import EnsemblePredictor
from ensemble.selection import (
    bagged_selection,
    best_group,
    check_metric,
    cross_validated_choice,
    ensemble_loss,
    greedy_selection,
    selection_candidates,
)
from ensemble.snapshots import Snapshots
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
) -> dict:
    """Select, score and log (see the module); save the selected predictor to `run_dir/selected_predictor`.

    Returns `{"predictor_dir", "value", "selection"}`: the selected predictor and its test value of the gating
    metric `evaluation.metric` (what registration compares), and the three ensembles' test scores.
    """
    logger, tracker = get_run_logger(), Tracker(settings)
    prepared = PreparedData.load(data_dir)
    uniform = EnsemblePredictor.load(evaluation.predictor_dir)
    metric = check_metric(config.sweep.selection_metric, prepared.task)
    val, test = (
        np.concatenate([g.predict_members(x, log_probs=True) for g in uniform.groups], axis=0)
        for x in (prepared.x_val, prepared.x_test)
    )  # (K, B, C) log-probabilities, or (K, B)
    y_val, combiner, sweep = prepared.y_val, uniform.combiner, config.sweep
    selection = greedy_selection(val, y_val, metric, combiner=combiner, sorted_init=True)  # the logged curve
    bagged = (
        bagged_selection(val, y_val, metric, sweep.selection_bags, combiner=combiner, sorted_init=True)
        if sweep.selection_bags
        else None
    )
    keys = library_members(uniform, trained)
    configurations = sweep_members(config.sweep, config.optimizer, config.snapshots, config.train)
    groups = [configurations[member]["configuration"] for member, _ in keys]  # each model's configuration
    candidates = selection_candidates(sweep.selection_bags, metric, combiner, groups)
    choice = (
        cross_validated_choice(val, y_val, candidates, metric, sweep.selection_folds, combiner=combiner)
        if sweep.selection_folds
        else None
    )
    chosen = choice.chosen if choice else "selection"
    weights = np.asarray(choice.weights if choice else (bagged or selection).weights)  # (K,), registered
    selected = EnsemblePredictor(
        uniform.preprocessor, uniform.groups, uniform.combiner, weights, None, uniform.interval_level
    )
    if prepared.task == "regression":
        selected.calibrate_interval(prepared.x_val, y_val)
    one_hot = best_group(val, y_val, groups, metric, combiner)
    best = groups[int(np.argmax(one_hot))]
    best_single = EnsemblePredictor(uniform.preprocessor, uniform.groups, uniform.combiner, one_hot)

    bins = config.evaluation.bins
    scores = {
        name: test_scores(p, test, prepared.y_test, bins)
        for name, p in (("selected", selected), ("uniform", uniform), ("best_configuration", best_single))
    }
    tracker.log_metrics(
        run_id,
        {f"{PREFIX}{name}_test_{k}": v for name, values in scores.items() for k, v in values.items()}
        | {
            f"{PREFIX}members_chosen": float(np.count_nonzero(weights)),
            f"{PREFIX}rounds_kept": float(selection.best_round + 1),
        },
    )
    tracker.log_metrics_at_steps(
        run_id, {r: {f"{PREFIX}val_{metric}": v} for r, v in enumerate(selection.curve)}
    )
    if bagged is not None:  # the average of bags 0..b
        curve = {b: {f"{PREFIX}bagged_val_{metric}": v} for b, v in enumerate(bagged.curve)}
        tracker.log_metrics_at_steps(run_id, curve)
    if choice is not None:
        tracker.log_metrics(run_id, {f"{PREFIX}cv_{metric}/{n}": v for n, v in choice.scores.items()})
    hyper = {
        k: v
        for k, v in configurations[keys[groups.index(best)][0]].items()
        if k not in ("repeat", "lr_scale")
    }
    tracker.log_params(
        run_id,
        {f"{PREFIX}best_configuration": hyper, f"{PREFIX}metric": metric, f"{PREFIX}chosen": chosen},
    )
    rows = [
        {
            "model": k,
            "member": m,
            "cycle": str(c),
            **{key: v for key, v in configurations[m].items() if key != "lr_scale"},
            f"val_{metric}": ensemble_loss(val[[k]], [1.0], y_val, metric, combiner),
            "count": selection.counts[k],
            "weight": float(weights[k]),
        }
        for k, (m, c) in enumerate(keys)
    ]
    tracker.log_table(run_id, rows, "selection.json")
    member_weight = np.bincount([m for m, _ in keys], weights=weights, minlength=trained.members)
    for n, member_run in enumerate(member_run_ids):
        tracker.log_metrics(member_run, {f"{PREFIX}weight": float(member_weight[n])})
    logger.info(
        f"Ensemble selection on validation {metric} ({sweep.selection_bags or 'no'} bags; registered: {chosen}, "
        f"{sweep.selection_folds or 'no'} folds): {np.count_nonzero(weights)} of {len(keys)} models weighted; "
        f"test {metric}: " + ", ".join(f"{name} {values[metric]:.4f}" for name, values in scores.items())
    )
    predictor_dir = selected.save(Path(run_dir) / "selected_predictor")
    return {
        "predictor_dir": str(predictor_dir),
        "value": scores["selected"].get(evaluation.metric, evaluation.value),
        "selection": scores,
    }
