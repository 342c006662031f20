"""What a member's raw outputs mean: the tasks, their head activations, and logits -> (log-)probabilities.

Axes: `(N, B, out)` = members, batch, raw outputs (`out = C` logits for multiclass, 1 logit for binary, 1 value for
regression); `(N, B, C)` = members, batch, classes (binary: `C = 2`, columns `[1 - p, p]`).

`log_probs_from_logits` is the one implementation of the formula. It is written with `keras.ops`, so the NumPy
paths (`FusedMLP.predict_members`, snapshots) and the compiled epoch-end scores (`ensemble.training.train.compiled_scores`)
run the same ops in float64, and their argmaxes break ties the same way.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from ensemble.data import TaskType as Task  # the tasks' one home

HEAD_ACTIVATIONS: dict[str, str] = {"binary": "sigmoid", "multiclass": "softmax", "regression": "linear"}


def log_probs_from_logits(logits, task: Task):
    """Classification logits `(N, B, out)` (array or tensor) -> log-probabilities `(N, B, C)` as a float64 tensor.

    Multiclass: log-softmax. Binary: `[log sigmoid(-z), log sigmoid(z)]` of the one logit `z` (no overflow, and no
    `1 - p` cancellation for a confident member). Usable inside a compiled function.
    """
    if task not in ("binary", "multiclass"):
        raise ValueError(
            f"Argument `task` must be 'binary' or 'multiclass' for log-probabilities. Received: task={task!r}"
        )
    logits = ops.cast(logits, "float64")
    if task == "binary":
        z = logits[..., :1]  # (N, B, 1)
        return ops.log_sigmoid(ops.concatenate([-z, z], axis=-1))  # (N, B, 2)
    return ops.log_softmax(logits, axis=-1)  # (N, B, C)


def outputs_to_log_probs(outputs: np.ndarray, task: Task) -> np.ndarray:
    """Raw classification outputs (logits) `(N, B, out)` -> log-probabilities `(N, B, C)`, NumPy float64
    (`log_probs_from_logits`)."""
    return ops.convert_to_numpy(log_probs_from_logits(np.asarray(outputs, dtype="float64"), task))


def outputs_to_predictions(outputs: np.ndarray, task: Task) -> np.ndarray:
    """Raw member outputs `(N, B, out)` -> probabilities `(N, B, C)` (the exp of `outputs_to_log_probs`), or
    predictions `(N, B)` for regression."""
    if task == "regression":
        return np.asarray(outputs, dtype="float64")[..., 0]
    return np.exp(outputs_to_log_probs(outputs, task))
