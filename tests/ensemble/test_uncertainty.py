"""Per-row uncertainty against plain-loop references, and the predictor's answers carrying it."""

import math

import numpy as np
import pandas as pd
import pytest

from ensemble.data import DataConfig, prepare_data
from ensemble.evaluation.metrics import combine
from ensemble.model.fused import FusedMLP
from ensemble.predictor import EnsemblePredictor
from ensemble.uncertainty import (
    classification_uncertainty,
    conformal_quantile,
    prediction_interval,
    weighted_log_combine,
    weighted_mean_and_spread,
)


def random_log_probs(members=4, rows=6, classes=3, seed=0):
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(members, rows, classes))
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_uncertainty_equals_a_row_by_row_python_reference():
    log_probs, weights = random_log_probs(), np.array([0.5, 0.25, 0.25, 0.0])
    got = classification_uncertainty(log_probs, weights)
    probs = np.exp(log_probs)
    for b in range(probs.shape[1]):
        mean = [sum(weights[k] * probs[k, b, c] for k in range(4)) for c in range(3)]
        total = -sum(p * math.log(p) for p in mean)
        members = sum(weights[k] * -sum(p * math.log(p) for p in probs[k, b]) for k in range(4))
        label = int(np.argmax(mean))
        votes = sum(weights[k] for k in range(4) if int(np.argmax(probs[k, b])) != label)
        assert got["predictive_entropy"][b] == pytest.approx(total, abs=1e-12)
        assert got["mean_member_entropy"][b] == pytest.approx(members, abs=1e-12)
        assert got["mutual_information"][b] == pytest.approx(total - members, abs=1e-12)
        assert got["disagreement"][b] == pytest.approx(votes, abs=1e-12)


def test_identical_members_have_no_mutual_information_or_disagreement():
    one = random_log_probs(members=1)
    got = classification_uncertainty(np.repeat(one, 5, axis=0))
    np.testing.assert_allclose(got["mutual_information"], 0.0, atol=1e-12)
    np.testing.assert_allclose(got["disagreement"], 0.0)
    np.testing.assert_allclose(got["predictive_entropy"], got["mean_member_entropy"], atol=1e-12)


def test_confident_members_that_disagree_have_high_mutual_information():
    sure = np.log(np.array([[[1 - 2e-9, 1e-9, 1e-9]], [[1e-9, 1 - 2e-9, 1e-9]]]))  # (2, 1, 3)
    got = classification_uncertainty(sure)
    assert got["mean_member_entropy"][0] < 1e-6
    assert got["mutual_information"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert got["disagreement"][0] == 0.5


@pytest.mark.parametrize("method", ["mean", "geometric"])
def test_uniform_weights_combine_like_the_unweighted_combiner(method):
    log_probs = random_log_probs(seed=1)
    np.testing.assert_allclose(
        np.exp(weighted_log_combine(log_probs, None, method)),
        combine(log_probs, method, log_probs=True),
        atol=1e-12,
    )


def test_integer_weights_equal_repeating_members():
    log_probs, counts = random_log_probs(seed=2), np.array([3, 0, 1, 2])
    repeated = np.repeat(log_probs, counts, axis=0)
    for method in ("mean", "geometric"):
        np.testing.assert_allclose(
            weighted_log_combine(log_probs, counts, method),
            weighted_log_combine(repeated, None, method),
            atol=1e-12,
        )
    mean, spread = weighted_mean_and_spread(log_probs[..., 0], counts)
    np.testing.assert_allclose(mean, repeated[..., 0].mean(0))
    np.testing.assert_allclose(spread, repeated[..., 0].std(0))


def test_conformal_interval_covers_the_level_on_average_over_calibration_sets():
    """Split conformal's guarantee: over calibration sets of n rows, a new row is covered with probability in
    [level, level + 1/(n+1)]; for N(0, 1) residuals the coverage of a half-width h is exactly 2 Phi(h) - 1."""
    rng, n = np.random.default_rng(0), 50
    coverages = []
    for _ in range(400):
        half = conformal_quantile(np.zeros(n), rng.normal(size=n), level=0.9)
        lower, upper = prediction_interval(np.zeros(1), np.zeros(1), half, 0.9)
        assert upper[0] - lower[0] == pytest.approx(2 * half)
        coverages.append(math.erf(half / math.sqrt(2)))
    assert 0.895 < np.mean(coverages) < 0.9 + 1 / (n + 1) + 0.005


def test_weights_must_be_one_non_negative_value_per_member():
    with pytest.raises(ValueError, match="non-negative member weights"):
        classification_uncertainty(random_log_probs(), [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="4 finite"):
        classification_uncertainty(random_log_probs(), [1.0, 1.0])


# --- the predictor ----------------------------------------------------------------------------------------------


def predictor_for(source: str, task: str, weights=None, members: int = 3):
    data = prepare_data(DataConfig(source=source, seed=0))
    model = FusedMLP(
        members, data.num_features, (8,), task=task, num_classes=max(data.num_classes, 2), seed=1
    )
    return EnsemblePredictor(data.preprocessor, [model], weights=weights), data, model


def test_classification_answers_carry_the_uncertainty_of_each_rows_member_probabilities():
    predictor, data, model = predictor_for("wine", "multiclass", weights=[2.0, 1.0, 1.0])
    rows = data.raw["test"][data.feature_names].head(7)
    answer = predictor.predict(rows)
    expected = classification_uncertainty(
        model.predict_members(data.x_test[:7], log_probs=True), [0.5, 0.25, 0.25]
    )
    assert list(answer.columns[-4:]) == [
        "predictive_entropy",
        "mean_member_entropy",
        "mutual_information",
        "disagreement",
    ]
    for name, values in expected.items():
        np.testing.assert_allclose(answer[name].to_numpy(), values, atol=1e-6)
    proba = answer[[c for c in answer.columns if c.startswith("proba_")]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_regression_answers_carry_a_calibrated_prediction_interval(tmp_path):
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(400, 3)), columns=["a", "b", "c"])
    frame["y"] = frame["a"] * 2 + np.random.default_rng(1).normal(size=400)
    frame.to_csv(tmp_path / "reg.csv", index=False)
    data = prepare_data(DataConfig(source=str(tmp_path / "reg.csv"), target="y", task="regression", seed=0))
    model = FusedMLP(3, data.num_features, (8,), task="regression", seed=1)
    predictor = EnsemblePredictor(data.preprocessor, [model])
    uncalibrated = predictor.predict(data.raw["test"][data.feature_names])
    np.testing.assert_allclose(
        uncalibrated["upper"] - uncalibrated["prediction"], 1.6449 * uncalibrated["spread"], rtol=1e-3
    )

    half = predictor.calibrate_interval(data.x_val, data.y_val)
    predictor.save(tmp_path / "p")
    answer = EnsemblePredictor.load(tmp_path / "p").predict(data.raw["test"][data.feature_names])
    assert list(answer.columns) == ["prediction", "spread", "lower", "upper"]
    np.testing.assert_allclose(answer["upper"] - answer["prediction"], half)
    np.testing.assert_allclose(answer["prediction"] - answer["lower"], half)
    mean = model.predict_members(data.x_val).mean(axis=0)
    assert np.mean(np.abs(data.y_val - mean) <= half) >= 0.9  # conformal: >= level on the rows it saw


def test_saved_weights_survive_a_round_trip(tmp_path):
    predictor, data, _ = predictor_for("wine", "multiclass", weights=[0.0, 3.0, 1.0])
    rows = data.raw["test"][data.feature_names].head(5)
    predictor.save(tmp_path / "p")
    loaded = EnsemblePredictor.load(tmp_path / "p")
    assert loaded.weights == [0.0, 0.75, 0.25]
    pd.testing.assert_frame_equal(loaded.predict(rows), predictor.predict(rows))
