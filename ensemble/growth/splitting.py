"""Splitting steepest descent (Liu, Wu, Wang, NeurIPS 2019): which hidden units to split, and in which direction.

Axes: `(N, B, H)` = members, rows, hidden units; `D = in + 1` = a unit's incoming weights and its bias.

Unit `i` of a hidden layer computes `h = sigma(theta . x~)`, `theta = [w; b]` `(D,)`, `x~ = [x; 1]`. Replacing it by two
copies `theta + delta v` and `theta - delta v`, each with half its outgoing weights, changes the next layer's input
by `w_out (sigma(z + delta v.x~) + sigma(z - delta v.x~)) / 2 - w_out sigma(z) = w_out delta^2 / 2 sigma''(z) (v.x~)^2
+ O(delta^4)`: the function is kept as delta -> 0, and the loss changes by

    L(split) - L = delta^2 / 2  v' S v + O(delta^4),    S = E_x[ dL/dh(x) sigma''(z(x)) x~ x~' ]  `(D, D)`,

the unit's *splitting matrix* (`dL/dh`: the gradient of the member's loss with respect to the unit's activation).
Its smallest eigenvalue, the *splitting index*, is the most a split of that unit lowers the loss (to second order),
reached along its eigenvector; a unit whose index is >= 0 gains nothing from a split. `splitting_index` computes
index and eigenvector for every member and unit of a layer at once, on the fused model.

`sigma''` comes from autodiff for smooth activations. ReLU and leaky ReLU are piecewise linear: `sigma''` is a Dirac
delta at the kink (times the change of slope), so `S` is an integral over the unit's hyperplane `z = 0`; it is
estimated with a Gaussian kernel on `z`, per member and unit, of Silverman's bandwidth `1.06 std(z) B^(-1/5)`.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from ensemble.model.fused import FusedMLP
from ensemble.training.train import label_tensor, member_losses

# Piecewise-linear activations: the change of slope at the kink z = 0 (sigma'' = jump * Dirac delta).
KINKS: dict[str, float] = {"relu": 1.0, "leaky_relu": 0.8}  # keras' leaky_relu: negative_slope 0.2
LINEAR: tuple[str, ...] = ("linear",)
MAX_ENTRIES = 2**24  # float64 entries of the (N, units, B, D) intermediate computed at once (~128 MB)


class SplittingIndex(NamedTuple):
    """The splitting index of every unit of one hidden layer, per member.

    Attributes:
        eigenvalues: `(N, H)` the smallest eigenvalue of each unit's splitting matrix (negative: a split helps).
        directions: `(N, H, D)` its unit-norm eigenvector over `[incoming weights; bias]`, `D = in + 1`.
    """

    eigenvalues: np.ndarray
    directions: np.ndarray


def activation_second_derivative(activation: str, z: tf.Tensor) -> tf.Tensor:
    """`sigma''(z)` elementwise, `z (N, B, H)`; for a kink (ReLU), its Gaussian-kernel estimate over the rows."""
    if activation in LINEAR:
        return tf.zeros_like(z)
    if activation in KINKS:
        rows = tf.cast(tf.shape(z)[1], z.dtype)
        std = tf.math.reduce_std(z, axis=1, keepdims=True)  # (N, 1, H)
        bandwidth = tf.maximum(1.06 * std * rows ** (-0.2), 1e-6)  # Silverman's rule of thumb
        density = tf.exp(-0.5 * tf.square(z / bandwidth)) / (bandwidth * np.sqrt(2 * np.pi))  # (N, B, H)
        return KINKS[activation] * density
    function = keras.activations.get(activation)
    with tf.GradientTape() as outer:
        outer.watch(z)
        with tf.GradientTape() as inner:
            inner.watch(z)
            h = function(z)
        slope = inner.gradient(h, z)  # elementwise activation: d sum(h) / dz = sigma'(z)
    return outer.gradient(slope, z)


def layer_terms(model: FusedMLP, x: np.ndarray, y: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """What the splitting matrices of hidden layer `layer` are made of, for every member at once.

    Args:
        model: the fused ensemble.
        x: rows `(B, d)` every member sees; y: their labels `(B,)`.
        layer: hidden layer index.

    Returns:
        `(inputs, weights)`: the layer's augmented inputs `x~ (N, B, D)` and the per-row weights
        `dL/dh * sigma''(z)` `(N, B, H)`, with `L` each member's mean loss over the rows, so that
        `S[n, i] = sum_b weights[n, b, i] x~[n, b] x~[n, b]'`.
    """
    if not 0 <= int(layer) < len(model.hidden_units):
        raise ValueError(
            f"Argument `layer` must be a hidden layer index in [0, {len(model.hidden_units)}). Received: {layer}"
        )
    x = tf.broadcast_to(tf.constant(np.asarray(x, "float32"))[None], [model.members, len(x), model.input_dim])
    labels = tf.broadcast_to(label_tensor(model.task, np.asarray(y))[None], [model.members, len(y)])
    with tf.GradientTape() as tape:
        a = x  # (N, B, d)
        for index, dense in enumerate(model.hidden_layers):
            z = tf.matmul(a, dense.kernel) + dense.bias[:, None, :]  # (N, B, H)
            h = dense.activation(z)
            if index == layer:
                inputs, pre_activation, activation = a, z, h
                tape.watch(activation)
            a = h
        loss = tf.reduce_sum(
            member_losses(model.task, labels, model.head(a))
        )  # sum: each member its own gradient
    grad = tape.gradient(loss, activation)  # (N, B, H)
    curvature = activation_second_derivative(model.activation, pre_activation)  # (N, B, H)
    ones = tf.ones_like(inputs[..., :1])
    augmented = tf.concat([inputs, ones], axis=-1)  # (N, B, D)
    return augmented.numpy().astype("float64"), (grad * curvature).numpy().astype("float64")


def splitting_matrices(inputs: np.ndarray, weights: np.ndarray, units: slice = slice(None)) -> np.ndarray:
    """`S[n, i] = sum_b weights[n, b, i] inputs[n, b] inputs[n, b]'`: `(N, B, D)`, `(N, B, H)` -> `(N, h, D, D)` for
    the `units` selected (all by default)."""
    w = weights[:, :, units].transpose(0, 2, 1)  # (N, h, B)
    weighted = w[..., None] * inputs[:, None]  # (N, h, B, D)
    return np.matmul(weighted.transpose(0, 1, 3, 2), inputs[:, None])  # (N, h, D, D)


def splitting_index(
    model: FusedMLP, x, y, layer: int, max_rows: int | None = 2048, seed: int = 0
) -> SplittingIndex:
    """The splitting index and direction of every unit of hidden layer `layer`, per member.

    Args:
        model: the fused ensemble.
        x: rows `(B, d)` (the training rows); y: labels `(B,)`.
        layer: hidden layer index.
        max_rows: use a random subset of at most this many rows (None: all).
        seed: seed of that subset.

    Returns:
        `SplittingIndex(eigenvalues (N, H), directions (N, H, D))`.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (len(x),) or len(x) < 2:
        raise ValueError(f"Expected x (B>=2, d) and y (B,). Received: x={x.shape}, y={y.shape}")
    if max_rows is not None and len(x) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size=int(max_rows), replace=False))
        x, y = x[rows], y[rows]
    inputs, weights = layer_terms(model, x, y, layer)
    members, rows, dim = inputs.shape
    width = weights.shape[2]
    chunk = max(1, MAX_ENTRIES // (members * rows * dim))
    eigenvalues, directions = np.empty((members, width)), np.empty((members, width, dim))
    for start in range(0, width, chunk):
        units = slice(start, min(width, start + chunk))
        values, vectors = np.linalg.eigh(splitting_matrices(inputs, weights, units))  # ascending
        eigenvalues[:, units], directions[:, units] = values[..., 0], vectors[..., 0]
    return SplittingIndex(eigenvalues, directions)


def most_negative_units(eigenvalues, k: int) -> np.ndarray:
    """The `k` units with the most negative splitting index, per member: `(N, H) -> (N, k)` indices, ascending."""
    eigenvalues = np.asarray(eigenvalues)
    if eigenvalues.ndim != 2:
        raise ValueError(
            f"Argument `eigenvalues` must have shape (N, H). Received: shape={eigenvalues.shape}"
        )
    if not 1 <= int(k) <= eigenvalues.shape[1]:
        raise ValueError(
            f"Argument `k` must be in [1, {eigenvalues.shape[1]}] (the layer width). Received: k={k}"
        )
    return np.sort(np.argsort(eigenvalues, axis=1, kind="stable")[:, : int(k)], axis=1)
