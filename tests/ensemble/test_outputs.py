"""Logits -> (log-)probabilities: one formula, the same in NumPy and inside a compiled TensorFlow function."""

import math

import numpy as np
import pytest
import tensorflow as tf

from ensemble.model.outputs import log_probs_from_logits, outputs_to_log_probs, outputs_to_predictions


def reference_log_probs(logits: np.ndarray, task: str) -> np.ndarray:
    """The slow obvious formula, one row at a time with Python floats."""
    rows = []
    for row in logits.reshape(-1, logits.shape[-1]).tolist():
        if task == "binary":
            p = 1 / (1 + math.exp(-row[0]))
            rows.append([math.log(1 - p), math.log(p)])
        else:
            total = sum(math.exp(v) for v in row)
            rows.append([v - math.log(total) for v in row])
    return np.array(rows).reshape(*logits.shape[:-1], -1)


@pytest.mark.parametrize(("task", "out"), [("binary", 1), ("multiclass", 4)])
def test_log_probs_match_the_plain_formula_and_the_compiled_function(task, out):
    logits = np.random.default_rng(0).normal(scale=3, size=(3, 5, out))
    expected = reference_log_probs(logits, task)
    np.testing.assert_allclose(outputs_to_log_probs(logits, task), expected, rtol=1e-12, atol=1e-14)
    graph = tf.function(
        lambda z: log_probs_from_logits(z, task), jit_compile=False
    )  # the epoch-end scores' graph
    np.testing.assert_array_equal(graph(tf.constant(logits)).numpy(), outputs_to_log_probs(logits, task))
    xla = tf.function(
        lambda z: log_probs_from_logits(z, task), jit_compile=True
    )  # XLA fuses: last-ulp rounding
    np.testing.assert_allclose(
        xla(tf.constant(logits)).numpy(), outputs_to_log_probs(logits, task), rtol=1e-15
    )
    np.testing.assert_array_equal(
        outputs_to_predictions(logits, task), np.exp(outputs_to_log_probs(logits, task))
    )


def test_confident_binary_logits_give_exact_logs_without_overflow():
    logits = np.array([[[1000.0], [-1000.0]]])
    np.testing.assert_array_equal(outputs_to_log_probs(logits, "binary"), [[[-1000.0, 0.0], [0.0, -1000.0]]])


def test_regression_outputs_are_the_predictions_and_have_no_log_probabilities():
    outputs = np.arange(6.0).reshape(2, 3, 1)
    np.testing.assert_array_equal(outputs_to_predictions(outputs, "regression"), outputs[..., 0])
    with pytest.raises(ValueError, match="'binary' or 'multiclass'"):
        outputs_to_log_probs(outputs, "regression")
