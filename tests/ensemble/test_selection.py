"""Greedy ensemble selection with replacement against a brute-force reference."""

import numpy as np
import pytest

from ensemble.evaluation import metrics
from ensemble.evaluation.selection import (
    DEFAULT_SELECTION_METRICS,
    PREFER_UNIFORM_STANDARD_ERRORS,
    ROW_LOSSES,
    SCORES,
    SELECTION_METRICS,
    bagged_selection,
    best_group,
    check_metric,
    choose_ensemble,
    cross_validated_choice,
    ensemble_loss,
    greedy_selection,
    losses,
    paired_z,
    selection_candidates,
)


def library(members=5, rows=40, classes=3, seed=0):
    """Log-probabilities `(K, B, C)` of members of different quality and labels `(B,)`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=rows)
    logits = rng.normal(size=(members, rows, classes))
    logits[np.arange(members)[:, None], np.arange(rows)[None], y[None]] += np.linspace(2.0, 0.0, members)[
        :, None
    ]
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), y


def brute_force_round(preds, y, chosen: list[int], metric, combiner):
    """The model whose addition to `chosen` scores best, by trying each one with `ensemble_loss`."""
    scores = []
    for k in range(len(preds)):
        counts = np.bincount([*chosen, k], minlength=len(preds))
        scores.append(ensemble_loss(preds, counts, y, metric, combiner))
    return int(np.argmin(scores)), min(scores)


@pytest.mark.parametrize(
    "metric, combiner", [("nll", "mean"), ("nll", "geometric"), ("brier", "mean"), ("accuracy", "mean")]
)
def test_each_round_adds_the_model_that_scores_best_tried_one_by_one(metric, combiner):
    preds, y = library()
    selection = greedy_selection(preds, y, metric=metric, rounds=8, combiner=combiner)
    chosen = []
    for step, added in enumerate(selection.order):
        best, score = brute_force_round(preds, y, chosen, metric, combiner)
        assert added == best and selection.curve[step] == pytest.approx(score, abs=1e-12)
        chosen.append(added)
    assert sum(selection.counts) == selection.best_round + 1
    assert selection.curve[selection.best_round] == min(selection.curve)


def test_selection_scores_no_worse_than_the_best_single_model_on_validation():
    preds, y = library(members=8, seed=3)
    selection = greedy_selection(preds, y)
    single = min(ensemble_loss(preds, np.eye(8)[k], y, "nll") for k in range(8))
    assert ensemble_loss(preds, selection.counts, y, "nll") <= single + 1e-12
    assert selection.curve[0] == pytest.approx(single)  # the first round picks the best single model


def test_a_useless_model_gets_no_weight():
    preds, y = library(members=4, seed=1)
    preds[2] = np.log(np.full_like(preds[2], 1e-6))  # near-zero probability everywhere: nll ~ 14
    preds[2] -= np.log(np.exp(preds[2]).sum(-1, keepdims=True))
    preds[2][np.arange(len(y)), (y + 1) % 3] = np.log(1 - 2e-6)
    assert greedy_selection(preds, y).counts[2] == 0


def test_regression_selection_minimises_rmse_of_the_weighted_mean():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    preds = np.stack(
        [y + 0.1 + rng.normal(scale=0.3, size=50), y - 0.1 + rng.normal(scale=0.3, size=50), y + 3.0]
    )
    selection = greedy_selection(preds, y, metric="rmse")
    assert selection.counts[2] == 0 and selection.counts[0] > 0 and selection.counts[1] > 0
    weighted = ensemble_loss(preds, selection.counts, y, "rmse")
    assert weighted < min(ensemble_loss(preds, np.eye(3)[k], y, "rmse") for k in range(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metric": "rmse"}, r"one of \('accuracy', 'nll', 'brier'\) for classification predictions"),
        ({"metric": "auc"}, "metric"),
        ({"rounds": 0}, "rounds"),
    ],
)
def test_greedy_selection_rejects_bad_arguments(kwargs, match):
    preds, y = library()
    with pytest.raises(ValueError, match=match):
        greedy_selection(preds, y, **kwargs)


def test_bagged_selection_averages_the_greedy_selections_of_its_random_subsets():
    preds, y = library(members=6, seed=2)
    bagged = bagged_selection(preds, y, bags=4, fraction=0.5, seed=7)
    rng, expected = np.random.default_rng(7), np.zeros(6)
    for _ in range(4):  # the same subsets, drawn the same way
        subset = np.sort(rng.choice(6, 3, replace=False))
        expected[subset] += greedy_selection(preds[subset], y).weights / 4
    np.testing.assert_allclose(bagged.weights, expected)
    assert sum(bagged.weights) == pytest.approx(1.0) and len(bagged.curve) == 4
    assert bagged.curve[-1] == pytest.approx(ensemble_loss(preds, bagged.weights, y, "nll"))


@pytest.mark.parametrize("combiner", ["mean", "geometric"])
def test_sorted_initialisation_starts_from_the_best_uniform_top_k_then_adds_greedily(combiner):
    preds, y = library(members=7, seed=4)
    selection = greedy_selection(preds, y, rounds=6, combiner=combiner, sorted_init=True)
    own = [ensemble_loss(preds, np.eye(7)[k], y, "nll", combiner) for k in range(7)]
    ranked = list(np.argsort(own, kind="stable"))
    top = [ensemble_loss(preds, np.isin(range(7), ranked[:j]), y, "nll", combiner) for j in range(1, 8)]
    k = int(np.argmin(top)) + 1  # the best uniform top-k ensemble, k chosen on validation
    assert selection.order[:k] == ranked[:k]
    np.testing.assert_allclose(selection.curve[:k], top[:k], atol=1e-12)
    chosen = list(ranked[:k])
    for step, added in enumerate(selection.order[k:]):  # then plain greedy rounds with replacement
        best, score = brute_force_round(preds, y, chosen, "nll", combiner)
        assert added == best and selection.curve[k + step] == pytest.approx(score, abs=1e-12)
        chosen.append(added)
    assert len(selection.curve) == k + 6 and sum(selection.counts) == selection.best_round + 1


def test_best_group_weights_the_configuration_whose_members_average_best():
    preds, y = library(members=6, seed=5)
    groups = [0, 0, 1, 1, 2, 2]
    scores = [ensemble_loss(preds[2 * g : 2 * g + 2], [1, 1], y, "nll") for g in range(3)]
    expected = np.repeat(np.eye(3)[int(np.argmin(scores))], 2) / 2
    np.testing.assert_allclose(best_group(preds, y, groups), expected)


def candidates_of(groups):
    return {
        "selection": lambda p, y: bagged_selection(p, y, bags=4, sorted_init=True).weights,
        "uniform": lambda p, y: np.ones(len(p)),
        "best_configuration": lambda p, y: best_group(p, y, groups),
    }


def test_cross_validated_choice_scores_each_candidate_on_folds_it_did_not_fit():
    preds, y = library(members=6, rows=60, seed=6)
    candidates = candidates_of([0, 0, 1, 1, 2, 2])
    choice = cross_validated_choice(preds, y, candidates, folds=4, seed=3)
    held_out = np.array_split(np.random.default_rng(3).permutation(60), 4)
    for name, fit in candidates.items():  # the obvious loop: fit on 3 folds, score the 4th, row-weighted mean
        total = 0.0
        for held in held_out:
            kept = np.array([r for r in range(60) if r not in set(held)])
            total += ensemble_loss(preds[:, held], fit(preds[:, kept], y[kept]), y[held], "nll") * len(held)
        assert choice.scores[name] == pytest.approx(total / 60, abs=1e-12)
    assert choice.chosen == min(choice.scores, key=choice.scores.get)
    refit = np.asarray(candidates[choice.chosen](preds, y), "float64")
    np.testing.assert_allclose(choice.weights, refit / refit.sum())


@pytest.mark.parametrize("library_kind", ["one_strong_model", "equally_noisy_models"])
def test_selection_never_scores_worse_in_cross_validation_than_uniform_or_best_configuration(library_kind):
    """The registered choice is the selection only where it beats both simple ensembles on held-out folds."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, size=90)
    logits = rng.normal(scale=2.0, size=(8, 90, 3))  # confident, independent errors: averaging all helps most
    logits[np.arange(8)[:, None], np.arange(90)[None], y[None]] += 1.0
    if library_kind == "one_strong_model":
        logits[5, np.arange(90), y] += 6.0  # one model far better than the rest and than their mean
    preds = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    choice = cross_validated_choice(preds, y, candidates_of(np.arange(8) // 2), folds=5)
    assert choice.scores[choice.chosen] <= min(choice.scores["uniform"], choice.scores["best_configuration"])
    if library_kind == "one_strong_model":
        assert choice.chosen == "selection" and int(np.argmax(choice.weights)) == 5
    else:
        assert choice.chosen == "uniform" and choice.weights == pytest.approx([1 / 8] * 8)


def row_losses_by_hand(preds, y, candidates, held_out):
    """Each candidate's held-out NLL per row: fitted on the other folds, -log p(y) of the combined ensemble."""
    rows = {}
    for name, fit in candidates.items():
        rows[name] = np.zeros(len(y))
        for held in held_out:
            kept = np.array([r for r in range(len(y)) if r not in set(held)])
            w = np.asarray(fit(preds[:, kept], y[kept]), "float64")
            probs = np.einsum("k,kbc->bc", w / w.sum(), np.exp(preds[:, held]))
            rows[name][held] = -np.log(probs[np.arange(len(held)), y[held]])
    return rows


def test_prefer_keeps_the_uniform_ensemble_unless_another_beats_it_by_the_margin_in_standard_errors():
    preds, y = library(members=6, rows=60, seed=6)
    candidates = candidates_of([0, 0, 1, 1, 2, 2])
    plain = cross_validated_choice(preds, y, candidates, folds=4, seed=3)
    assert plain.chosen != "uniform" and plain.z_scores == {}  # the best score wins without `prefer`
    rows = row_losses_by_hand(
        preds, y, candidates, np.array_split(np.random.default_rng(3).permutation(60), 4)
    )
    z = {}
    for name in (
        "selection",
        "best_configuration",
    ):  # the obvious paired z: mean difference / its standard error
        d = rows[name] - rows["uniform"]
        z[name] = d.mean() / (d.std(ddof=1) / np.sqrt(60))
    assert (
        -z[plain.chosen] > 0.5
    )  # better than uniform, by a margin the thresholds below fall on either side of
    for margin, expected in (
        (0.0, plain.chosen),
        (-z[plain.chosen] - 0.01, plain.chosen),
        (-z[plain.chosen] + 0.01, "uniform"),
    ):
        choice = cross_validated_choice(
            preds, y, candidates, folds=4, seed=3, prefer="uniform", standard_errors=margin
        )
        assert choice.z_scores == pytest.approx(z, abs=1e-9)
        assert choice.scores == plain.scores and choice.chosen == expected
        refit = np.asarray(candidates[expected](preds, y), "float64")
        np.testing.assert_allclose(choice.weights, refit / refit.sum())


@pytest.mark.parametrize("metric", ["rmse", "r2"])
def test_cross_validated_scores_are_the_metric_of_all_held_out_predictions_even_with_one_row_per_fold(metric):
    """Pooled, not per fold: a one-row fold has no r2 of its own, and a mean of per-fold rmse is not the rmse."""
    rng = np.random.default_rng(2)
    y = rng.normal(size=12)
    preds = y[None] + rng.normal(scale=[[0.2], [0.4], [1.5]], size=(3, 12))  # (K, B) regression predictions
    candidates = {"first": lambda p, t: np.array([1.0, 0, 0]), "uniform": lambda p, t: np.ones(3)}
    choice = cross_validated_choice(preds, y, candidates, metric, folds=12)
    for name, fit in candidates.items():
        w = fit(preds, y)
        held_out = w @ preds / w.sum()  # fixed weights: the held-out predictions are the plain weighted means
        expected = np.sqrt(np.mean((held_out - y) ** 2)) if metric == "rmse" else 1 - metrics.r2(held_out, y)
        assert choice.scores[name] == pytest.approx(expected, abs=1e-12)
    assert choice.chosen == "first"


def test_paired_z_is_the_mean_difference_in_standard_errors_and_handles_constant_differences():
    a, b = np.array([1.0, 2.0, 4.0, 3.0]), np.array([2.0, 2.0, 5.0, 5.0])
    d = a - b
    assert paired_z(a, b) == pytest.approx(d.mean() / (d.std(ddof=1) / 2))
    assert paired_z(a, a) == 0.0
    assert paired_z(a, a + 1) == -np.inf and paired_z(a + 1, a) == np.inf


ROW_LOSS_TO_METRIC = {  # the registry metric of one prediction in terms of its row losses
    "accuracy": lambda rows, y: 1.0 - rows.mean(),
    "nll": lambda rows, y: rows.mean(),
    "brier": lambda rows, y: rows.mean(),
    "rmse": lambda rows, y: np.sqrt(rows.mean()),
    "mae": lambda rows, y: rows.mean(),
    "r2": lambda rows, y: 1.0 - rows.sum() / np.sum((y - y.mean()) ** 2),
}


@pytest.mark.parametrize("metric", SELECTION_METRICS)
def test_each_row_loss_is_the_part_of_its_registry_metric_one_row_contributes(metric):
    """Checked against `ensemble.evaluation.metrics` prediction by prediction, so another metric's row loss fails."""
    rng = np.random.default_rng(4)
    if metrics.METRICS[metric].kind == "regression":
        y = rng.normal(size=30)
        predictions = y[None] + rng.standard_t(2, size=(4, 30)) * np.array([[0.1], [0.5], [1.0], [2.0]])
    else:
        predictions, y = library(members=4, rows=30, seed=4)
    rows = ROW_LOSSES[metric](predictions, y)
    assert rows.shape == (len(predictions), 30)
    for k, prediction in enumerate(predictions):
        expected = reference_value(metric, prediction, y)
        assert ROW_LOSS_TO_METRIC[metric](rows[k], y) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"folds": 1}, "folds"),
        ({"folds": 41}, "folds"),
        ({"candidates": {}}, "candidates"),
        ({"prefer": "best"}, "prefer"),
        ({"standard_errors": -1.0}, "standard_errors"),
        ({"standard_errors": float("nan")}, "standard_errors"),
    ],
)
def test_cross_validated_choice_rejects_bad_arguments(kwargs, match):
    preds, y = library()
    arguments = {"candidates": {"uniform": lambda p, y: np.ones(len(p))}, **kwargs}
    with pytest.raises(ValueError, match=match):
        cross_validated_choice(preds, y, **arguments)


def reference_value(metric: str, prediction: np.ndarray, y: np.ndarray) -> float:
    """`ensemble.evaluation.metrics`' own value of `metric` for one combined prediction: log-probabilities `(B, C)` or a mean
    `(B,)`."""
    if metric == "nll":
        return metrics.nll(prediction, y, log_probs=True)
    if metrics.METRICS[metric].kind == "classification":
        return getattr(metrics, metric)(np.exp(prediction), y)
    return getattr(metrics, metric)(prediction, y)


@pytest.mark.parametrize("metric", SELECTION_METRICS)
def test_each_selection_score_is_the_registry_metric_and_its_loss_follows_the_registry_direction(metric):
    log_probs, y = library(members=4, rows=30, seed=8)  # (K, B, C)
    if metrics.METRICS[metric].kind == "regression":
        y = np.random.default_rng(8).normal(size=30)
        predictions = y[None] + np.random.default_rng(9).normal(size=(4, 30)) * np.arange(1, 5)[:, None]
    else:
        predictions = log_probs
    values = [reference_value(metric, p, y) for p in predictions]
    np.testing.assert_allclose(SCORES[metric](predictions, y), values, atol=1e-12)
    expected = np.subtract(1.0, values) if metrics.higher_is_better(metric) else values
    np.testing.assert_allclose(losses(predictions, y, metric), expected, atol=1e-12)
    best = int(np.argmax(values) if metrics.higher_is_better(metric) else np.argmin(values))
    assert greedy_selection(predictions, y, metric, rounds=1).order == [best]  # round 1: the best model


def test_selection_metrics_are_the_registry_metrics_with_a_score_and_each_kind_has_its_default():
    assert set(SELECTION_METRICS) == set(SCORES) and set(SCORES) <= set(metrics.METRICS)
    assert list(SELECTION_METRICS) == [name for name in metrics.METRICS if name in SCORES]  # registry order
    for kind, default in DEFAULT_SELECTION_METRICS.items():
        assert metrics.METRICS[default].kind == kind


@pytest.mark.parametrize(
    "metric, task, result",
    [
        (None, "binary", "nll"),
        (None, "regression", "rmse"),
        ("brier", "multiclass", "brier"),
        ("mae", "regression", "mae"),
        (
            "rmse",
            "binary",
            "regression metric but the data is a binary task; use one of ('accuracy', 'nll', 'brier')",
        ),
        (
            "nll",
            "regression",
            "classification metric but the data is a regression task; use one of ('rmse', 'mae', ",
        ),
        ("ece", "binary", "must be one of ('accuracy', 'nll', 'brier', 'rmse', 'mae', 'r2')"),
    ],
)
def test_check_metric_resolves_the_default_and_names_the_metrics_that_fit_the_task(metric, task, result):
    if result in metrics.METRICS:
        assert check_metric(metric, task) == result
    else:
        with pytest.raises(ValueError) as raised:
            check_metric(metric, task)
        assert result in str(raised.value)


def test_choose_ensemble_registers_the_cross_validated_choice_or_without_folds_the_selection():
    preds, y = library(members=6, rows=60, seed=6)
    groups = [0, 0, 1, 1, 2, 2]
    chosen = choose_ensemble(preds, y, groups, bags=4, folds=3)
    choice = cross_validated_choice(
        preds,
        y,
        selection_candidates(4, "nll", "mean", groups),
        folds=3,
        prefer="uniform",
        standard_errors=PREFER_UNIFORM_STANDARD_ERRORS,
    )
    assert chosen.chosen == choice.chosen and chosen.choice.scores == choice.scores
    assert chosen.choice.z_scores == choice.z_scores
    np.testing.assert_allclose(chosen.weights, choice.weights)
    np.testing.assert_allclose(chosen.best_configuration, best_group(preds, y, groups))
    assert chosen.greedy == greedy_selection(preds, y, sorted_init=True)
    unchosen = choose_ensemble(preds, y, groups, bags=4, folds=0)
    assert unchosen.chosen == "selection" and unchosen.choice is None
    np.testing.assert_allclose(unchosen.weights, bagged_selection(preds, y, bags=4, sorted_init=True).weights)
    plain = choose_ensemble(preds, y, groups, bags=0, folds=0)
    assert plain.bagged is None
    np.testing.assert_allclose(plain.weights, greedy_selection(preds, y, sorted_init=True).weights)
