import itertools
import math

import numpy as np
import pytest

from ensemble.evaluation import metrics

# Four samples, three classes. Argmax (ties: lowest index) and confidence per row:
#   row 0: [0.70, 0.20, 0.10], y=0 -> pred 0, correct, conf 0.70
#   row 1: [0.10, 0.60, 0.30], y=2 -> pred 1, wrong,   conf 0.60
#   row 2: [0.20, 0.25, 0.55], y=2 -> pred 2, correct, conf 0.55
#   row 3: [0.45, 0.45, 0.10], y=1 -> pred 0, wrong,   conf 0.45
PROBS = np.array([[0.70, 0.20, 0.10], [0.10, 0.60, 0.30], [0.20, 0.25, 0.55], [0.45, 0.45, 0.10]])
Y = np.array([0, 2, 2, 1])


def _member_probs(preds, confidence, num_classes=2):
    """(N, B, C) probabilities putting `confidence` on each predicted class and the rest evenly elsewhere."""
    preds = np.asarray(preds)  # (N, B)
    probs = np.full((*preds.shape, num_classes), (1.0 - confidence) / (num_classes - 1))
    np.put_along_axis(probs, preds[..., None], confidence, axis=-1)
    return probs


def test_accuracy_hand_example():
    # correct rows 0 and 2 -> 2 / 4
    assert metrics.accuracy(PROBS, Y) == 0.5


def test_nll_hand_example():
    # -(log 0.7 + log 0.3 + log 0.55 + log 0.45) / 4 = (0.35667 + 1.20397 + 0.59784 + 0.79851) / 4 = 0.73925
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.55) + math.log(0.45)) / 4
    assert metrics.nll(PROBS, Y) == pytest.approx(expected)
    assert expected == pytest.approx(0.73925, abs=1e-5)


def test_brier_hand_example():
    # row 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14;  row 1: 0.1^2 + 0.6^2 + 0.7^2 = 0.86
    # row 2: 0.2^2 + 0.25^2 + 0.45^2 = 0.305;  row 3: 0.45^2 + 0.55^2 + 0.1^2 = 0.515  -> mean 1.82 / 4 = 0.455
    assert metrics.brier(PROBS, Y) == pytest.approx(0.455)


def test_brier_binary_is_twice_binary_only_brier():
    p = np.array([0.9, 0.2, 0.6])
    y = np.array([1, 0, 0])
    binary_only = np.mean((p - y) ** 2)  # (0.01 + 0.04 + 0.36) / 3
    assert metrics.brier(np.stack([1 - p, p], axis=-1), y) == pytest.approx(2 * binary_only)


def test_ece_hand_example():
    # bins=2: (0, 0.5] holds row 3 (acc 0, conf 0.45) -> 1/4 * 0.45 = 0.1125
    #         (0.5, 1] holds rows 0-2 (acc 2/3, conf 1.85/3) -> 3/4 * 0.15/3 = 0.0375   -> ECE 0.15
    assert metrics.expected_calibration_error(PROBS, Y, bins=2) == pytest.approx(0.15)
    # bins=1: |mean acc - mean conf| = |0.5 - 2.3 / 4| = 0.075
    assert metrics.expected_calibration_error(PROBS, Y, bins=1) == pytest.approx(0.075)


def test_ece_matches_slow_reference():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, size=200)
    bins = 15
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    expected = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            expected += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    assert metrics.expected_calibration_error(probs, y, bins=bins) == pytest.approx(expected)


def test_perfect_predictions_are_finite_and_zero():
    probs = np.eye(3)[[0, 2, 1, 1]]  # exact 0 and 1 probabilities
    y = np.array([0, 2, 1, 1])
    assert metrics.accuracy(probs, y) == 1.0
    assert metrics.nll(probs, y) == pytest.approx(0.0, abs=1e-9)
    assert metrics.brier(probs, y) == 0.0
    assert metrics.expected_calibration_error(probs, y) == 0.0


def test_confident_mistake_costs_what_it_costs_with_no_floor():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1, 1])
    assert metrics.nll(probs, y) == math.inf  # row 0: -log 0 (a floor at 1e-12 reported 13.8)
    assert metrics.brier(probs, y) == pytest.approx(1.0)  # (1 + 1 + 0) / 2
    log_probs = np.array([[0.0, -1000.0], [-1000.0, 0.0]])  # log-softmax of logits (0, -1000) and (-1000, 0)
    assert metrics.nll(log_probs, y, log_probs=True) == 500.0


def test_class_absent_from_batch():
    probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    y = np.array([0, 1])  # class 2 never occurs
    assert metrics.accuracy(probs, y) == 1.0
    assert metrics.nll(probs, y) == pytest.approx(math.log(2))
    assert metrics.brier(probs, y) == pytest.approx(0.375)  # 0.25 + 0.0625 + 0.0625 per row
    assert metrics.expected_calibration_error(probs, y) == pytest.approx(0.5)  # acc 1, conf 0.5


def test_geometric_mean_hand_example_differs_from_arithmetic():
    member_probs = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])  # (N=2, B=1, C=2)
    # arithmetic: [0.7, 0.3];  geometric: [sqrt(0.45), sqrt(0.05)] / sum = [3, 1] / 4 = [0.75, 0.25]
    np.testing.assert_allclose(metrics.combine(member_probs, "mean"), [[0.7, 0.3]])
    np.testing.assert_allclose(metrics.combine(member_probs, "geometric"), [[0.75, 0.25]])


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_combine_of_identical_members_is_the_member(method):
    member = np.random.default_rng(1).dirichlet(np.ones(5), size=7)
    np.testing.assert_allclose(metrics.combine(np.stack([member] * 3), method), member, rtol=1e-10)


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_combine_is_invariant_to_member_order(method):
    member_probs = np.random.default_rng(2).dirichlet(np.ones(4), size=(5, 6))  # (N, B, C)
    permuted = member_probs[[3, 0, 4, 2, 1]]
    np.testing.assert_allclose(metrics.combine(member_probs, method), metrics.combine(permuted, method))
    np.testing.assert_allclose(metrics.combine(member_probs, method).sum(axis=-1), 1.0)


def test_geometric_mean_of_exact_zeros_in_every_class_asks_for_log_probabilities():
    member_probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # 0 / 0: the probabilities no longer tell
    with pytest.raises(ValueError, match=r"0 for every class in rows \[0\].*log_probs=True"):
        metrics.combine(member_probs, "geometric")
    logits = np.array([[[0.0, -800.0]], [[-700.0, 0.0]]])  # what rounded to those probabilities
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        metrics.combine(log_probs, "geometric", log_probs=True), [[1.0, np.exp(-50.0)]]
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_geometric_mean_of_softmax_members_is_the_softmax_of_their_mean_logits():
    # softmax(z_i) = exp(z_i - lse(z_i)): the renormalised geometric mean cancels each lse, leaving
    # softmax(mean_i z_i), an exact reference. Confident members put most probabilities far below 1e-12.
    logits = np.random.default_rng(0).normal(scale=30.0, size=(8, 50, 10))  # (N, B, C)
    y = np.random.default_rng(1).integers(0, 10, size=50)
    reference = _softmax(logits.mean(axis=0))  # (B, C)
    assert (_softmax(logits) < 1e-12).mean() > 0.5
    np.testing.assert_allclose(metrics.combine(_softmax(logits), "geometric"), reference, rtol=1e-9, atol=0)
    exact_nll = -np.mean(_log_softmax(logits.mean(axis=0))[np.arange(50), y])
    result = metrics.evaluate_classification(_log_softmax(logits), y, "geometric", log_probs=True)
    assert result["nll"] == pytest.approx(exact_nll, rel=1e-12)
    assert metrics.evaluate_classification(_softmax(logits), y, "geometric")["nll"] == pytest.approx(
        exact_nll
    )


def test_nll_from_log_probabilities_is_exact_where_probabilities_underflow():
    logits = np.array([[0.0, -900.0], [-2000.0, 0.0]])  # (B, C): the true class 1 of row 0 has p = e^-900
    y = np.array([1, 1])
    assert metrics.nll(_log_softmax(logits), y, log_probs=True) == pytest.approx(450.0)
    mean = metrics.evaluate_classification(_log_softmax(logits)[None], y, "mean", log_probs=True)
    assert mean["nll"] == pytest.approx(450.0) and mean["mean_member_nll"] == pytest.approx(450.0)


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_metrics_from_log_probabilities_equal_those_from_probabilities(method):
    log_probs = _log_softmax(np.random.default_rng(4).normal(size=(5, 30, 4)))  # (N, B, C)
    y = np.random.default_rng(5).integers(0, 4, size=30)
    from_logs = metrics.evaluate_classification(log_probs, y, method, log_probs=True)
    from_probs = metrics.evaluate_classification(np.exp(log_probs), y, method)
    assert from_logs == pytest.approx(from_probs, rel=1e-12)
    np.testing.assert_allclose(
        metrics.combine(log_probs, method, log_probs=True),
        metrics.combine(np.exp(log_probs), method),
        rtol=1e-12,
    )


def test_log_probabilities_are_validated():
    with pytest.raises(ValueError, match="log-probabilities in \\[-inf, 0\\]"):
        metrics.combine(np.full((2, 3, 2), 0.5), log_probs=True)
    with pytest.raises(ValueError, match="pass log-softmax outputs, not logits"):
        metrics.nll(np.array([[-1.0, -1.0]]), np.array([0]), log_probs=True)


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_combine_members_selects_a_subset(method):
    member_probs = np.random.default_rng(3).dirichlet(np.ones(3), size=(4, 5))
    np.testing.assert_allclose(
        metrics.combine(member_probs, method, members=[0, 2]), metrics.combine(member_probs[[0, 2]], method)
    )


@pytest.mark.parametrize(
    ("member_probs", "kwargs", "match"),
    [
        (np.full((2, 3), 0.5), {}, "must be a 3-D array"),
        (np.zeros((0, 2, 2)), {}, "no empty axis"),
        (np.full((2, 3, 2), 0.5), {"members": [0, 2]}, "must index members in 0..1"),
        (np.full((2, 3, 2), 0.5), {"members": []}, "non-empty sequence of ints"),
        (np.full((2, 3, 2), 0.5), {"members": [1, 1]}, "must not repeat"),
        (np.full((2, 3, 2), 0.6), {}, "rows summing to 1"),
        (np.full((2, 3, 2), 0.5), {"method": "median"}, "Argument `method` must be one of"),
    ],
)
def test_combine_validates_arguments(member_probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.combine(member_probs, **kwargs)


def test_metrics_validate_labels_and_bins():
    with pytest.raises(ValueError, match="labels in 0..2"):
        metrics.accuracy(PROBS, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \(B,\)=\(4,\)"):
        metrics.nll(PROBS, np.array([0, 1]))
    with pytest.raises(ValueError, match="Argument `bins` must be an int >= 1. Received: bins=0"):
        metrics.expected_calibration_error(PROBS, Y, bins=0)


def test_disagreement_of_two_members():
    member_probs = _member_probs([[0, 1, 1, 0], [0, 1, 0, 1]], 0.8)  # differ on samples 2 and 3
    assert metrics.disagreement(member_probs) == pytest.approx(0.5)
    assert metrics.disagreement(member_probs[:1]) == 0.0


def test_disagreement_of_three_members_matches_pairwise_loop():
    preds = [[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 1]]
    # pairs (0, 1): 2/4, (0, 2): 1/4, (1, 2): 1/4 -> mean 1/3
    assert metrics.disagreement(_member_probs(preds, 0.8)) == pytest.approx(1 / 3)
    rng = np.random.default_rng(4)
    member_probs = rng.dirichlet(np.ones(3), size=(6, 50))
    argmax = member_probs.argmax(axis=-1)
    pairwise = [np.mean(argmax[i] != argmax[j]) for i, j in itertools.combinations(range(6), 2)]
    assert metrics.disagreement(member_probs) == pytest.approx(np.mean(pairwise))


def test_normalized_disagreement_and_oracle_accuracy():
    # member 0 predicts [0, 1, 1, 0] with confidence 0.9, member 1 predicts [0, 1, 0, 1] with confidence 0.6;
    # the mean follows member 0 where they differ (0.65 vs 0.35) -> ensemble [0, 1, 1, 0], wrong only on sample 3.
    member_probs = np.concatenate([_member_probs([[0, 1, 1, 0]], 0.9), _member_probs([[0, 1, 0, 1]], 0.6)])
    y = np.array([0, 1, 1, 1])
    assert metrics.normalized_disagreement(member_probs, y) == pytest.approx(0.5 / 0.25)
    assert metrics.oracle_accuracy(member_probs, y) == 1.0  # member 0 right on 0-2, member 1 right on 3
    assert metrics.oracle_accuracy(member_probs[:1], y) == 0.75


def test_normalized_disagreement_of_a_perfect_ensemble_is_finite():
    y = np.array([0, 1, 1, 0])
    agreeing = _member_probs([[0, 1, 1, 0], [0, 1, 1, 0]], 0.9)
    assert metrics.normalized_disagreement(agreeing, y) == 0.0
    # member 1 (weak) is wrong on sample 2, the ensemble is not: disagreement 1/4, error floored at 1/B = 1/4
    disagreeing = np.concatenate([_member_probs([[0, 1, 1, 0]], 0.9), _member_probs([[0, 1, 0, 0]], 0.6)])
    assert metrics.normalized_disagreement(disagreeing, y) == pytest.approx(1.0)


def test_member_metrics_match_single_model_metrics():
    member_probs = np.random.default_rng(5).dirichlet(np.ones(3), size=(3, 8))
    y = np.arange(8) % 3
    rows = metrics.member_metrics(member_probs, y, bins=5)
    assert [row["member"] for row in rows] == [0, 1, 2]
    assert rows[1]["accuracy"] == metrics.accuracy(member_probs[1], y)
    assert rows[1]["nll"] == metrics.nll(member_probs[1], y)
    assert rows[1]["brier"] == metrics.brier(member_probs[1], y)
    assert rows[1]["ece"] == metrics.expected_calibration_error(member_probs[1], y, bins=5)


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_evaluate_classification_returns_plain_numbers(method):
    member_probs = np.concatenate([_member_probs([[0, 1, 1, 0]], 0.9), _member_probs([[0, 1, 0, 1]], 0.6)])
    y = np.array([0, 1, 1, 1])
    result = metrics.evaluate_classification(member_probs, y, method=method, bins=5)
    assert set(result) == {
        "accuracy",
        "nll",
        "brier",
        "ece",
        "disagreement",
        "normalized_disagreement",
        "oracle_accuracy",
        "mean_member_accuracy",
        "mean_member_nll",
        "best_member_accuracy",
        "num_members",
    }
    assert all(type(value) is float for key, value in result.items() if key != "num_members")
    assert type(result["num_members"]) is int and result["num_members"] == 2
    assert result["accuracy"] == 0.75
    assert result["nll"] == pytest.approx(metrics.nll(metrics.combine(member_probs, method), y))
    assert result["mean_member_accuracy"] == 0.75  # both members get 3 of 4
    assert result["best_member_accuracy"] == 0.75
    assert result["oracle_accuracy"] == 1.0


def test_evaluate_classification_members_subset():
    member_probs = np.random.default_rng(6).dirichlet(np.ones(3), size=(4, 10))
    y = np.arange(10) % 3
    assert metrics.evaluate_classification(
        member_probs, y, members=[1, 3]
    ) == metrics.evaluate_classification(member_probs[[1, 3]], y)


def test_combine_regression_hand_example():
    member_preds = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])  # (N=3, B=2)
    mean, spread = metrics.combine_regression(member_preds)
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(spread, [math.sqrt(2 / 3), math.sqrt(8 / 3)])  # ddof=0
    mean_3d, spread_3d = metrics.combine_regression(member_preds[..., None], members=[0, 2])  # (N, B, 1)
    np.testing.assert_allclose(mean_3d, [2.0, 4.0])
    np.testing.assert_allclose(spread_3d, [1.0, 2.0])
    with pytest.raises(ValueError, match="Argument `member_preds` must have shape"):
        metrics.combine_regression(np.ones((2, 3, 2)))


def test_rmse_and_mae_hand_example():
    # errors [-0.5, 1.0]: rmse sqrt((0.25 + 1) / 2) = 0.7906, mae 0.75
    assert metrics.rmse([2.0, 4.0], [2.5, 3.0]) == pytest.approx(math.sqrt(0.625))
    assert metrics.mae([2.0, 4.0], [2.5, 3.0]) == pytest.approx(0.75)


def test_gaussian_nll_hand_example():
    # 0.5 * log(2 pi) + (1 - 0)^2 / 2 = 0.91894 + 0.5
    assert metrics.gaussian_nll([0.0], [1.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)
    # zero spread is floored at min_std=1e-3: 0.5 * log(2 pi 1e-6) = -5.98882
    assert metrics.gaussian_nll([3.0], [0.0], [3.0]) == pytest.approx(0.5 * math.log(2 * math.pi * 1e-6))
    with pytest.raises(ValueError, match="Argument `min_std` must be > 0"):
        metrics.gaussian_nll([0.0], [1.0], [1.0], min_std=0.0)


def test_evaluate_regression_hand_example():
    member_preds = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    y = np.array([2.5, 3.0])
    result = metrics.evaluate_regression(member_preds, y)
    assert result["rmse"] == pytest.approx(math.sqrt(0.625))
    assert result["mae"] == pytest.approx(0.75)
    spread = np.array([math.sqrt(2 / 3), math.sqrt(8 / 3)])
    expected_nll = np.mean(0.5 * np.log(2 * np.pi * spread**2) + np.array([0.25, 1.0]) / (2 * spread**2))
    assert result["gaussian_nll"] == pytest.approx(expected_nll)
    # member errors: [-1.5, -1], [-0.5, 1], [0.5, 3]
    expected_member_rmse = (math.sqrt(1.625) + math.sqrt(0.625) + math.sqrt(4.625)) / 3
    assert result["mean_member_rmse"] == pytest.approx(expected_member_rmse)
    assert result["mean_spread"] == pytest.approx(spread.mean())
    assert result["num_members"] == 3
    assert all(type(value) is float for key, value in result.items() if key != "num_members")


def test_r2_hand_example_and_constant_targets():
    # residuals [0.5, -0.5, 0] -> 0.5; deviations from the mean 2: [-1, 0, 1] -> 2; r2 = 1 - 0.5 / 2
    assert metrics.r2([1.5, 1.5, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.75)
    assert metrics.r2([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)  # the mean predicts nothing
    assert metrics.r2([3.0, 3.0], [3.0, 3.0]) == 1.0 and metrics.r2([2.0, 4.0], [3.0, 3.0]) == 0.0
    result = metrics.evaluate_regression(np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]), np.array([2.5, 3.0]))
    assert result["r2"] == pytest.approx(1 - 0.625 / 0.0625)  # ensemble mean [2, 4]: mse 0.625, var(y) 0.0625


# ---------------------------------------------------------------------------------------------------------------
# The registries: combiners and metrics (name, kind of task, direction)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", metrics.COMBINERS)
def test_every_registered_combiner_combines_to_probabilities(method):
    member_probs = np.stack([PROBS, PROBS[::-1]])  # (2, 4, 3)
    combined = metrics.combine(member_probs, method=method)
    np.testing.assert_allclose(combined.sum(axis=-1), 1.0)
    assert metrics.evaluate_classification(member_probs, Y, method=method)["num_members"] == 2


def test_registered_metrics_are_what_each_kind_of_evaluation_computes():
    member_probs = np.stack([PROBS, PROBS[::-1]])
    classification = metrics.evaluate_classification(member_probs, Y)
    regression = metrics.evaluate_regression(np.array([[1.0, 2.0], [2.0, 3.0]]), np.array([1.5, 2.0]))
    assert set(metrics.metrics_for("classification")) <= set(classification)
    assert set(metrics.metrics_for("regression")) <= set(regression)
    assert set(metrics.METRICS) == {
        *metrics.metrics_for("classification"),
        *metrics.metrics_for("regression"),
    }


@pytest.mark.parametrize("name", metrics.METRICS)
def test_registered_direction_ranks_a_perfect_model_above_a_poor_one(name):
    """A model that is right everywhere must score better, in the registered direction, than one that is not."""
    info = metrics.METRICS[name]
    if info.kind == "classification":
        y = np.array([0, 1, 2, 0, 1, 2])
        good = np.eye(3)[y] * 0.9 + 0.1 / 3  # (B, C), right and confident
        poor = np.roll(good, 1, axis=-1) * 0.5 + 0.5 / 3  # (B, C), wrong and unsure
        scored = {
            k: metrics.evaluate_classification(p[None], y)[name] for k, p in (("good", good), ("poor", poor))
        }
    else:
        y = np.array([0.0, 1.0, 2.0, 3.0])
        pred = {"good": y + np.array([0.01, -0.01, 0.01, -0.01]), "poor": y[::-1]}
        scored = {k: metrics.evaluate_regression(p[None], y)[name] for k, p in pred.items()}
    better = scored["good"] > scored["poor"] if info.higher_is_better else scored["good"] < scored["poor"]
    assert better, (name, scored)
    assert metrics.higher_is_better(name) is info.higher_is_better


def test_unknown_combiner_and_metric_are_refused_with_the_registered_names():
    with pytest.raises(
        ValueError, match=r"`method` must be one of \('mean', 'geometric'\). Received: method='max'"
    ):
        metrics.combine(np.stack([PROBS]), method="max")
    with pytest.raises(ValueError, match=r"`metric` must be one of \('accuracy', 'nll', .*'r2'\)"):
        metrics.higher_is_better("f1")
