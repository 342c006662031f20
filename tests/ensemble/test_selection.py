"""Greedy ensemble selection with replacement against a brute-force reference."""

import numpy as np
import pytest

from ensemble.selection import bagged_selection, ensemble_loss, greedy_selection


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
        ({"metric": "rmse"}, "must be 'rmse' for regression"),
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
