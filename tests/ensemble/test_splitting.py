"""The splitting index (splitting steepest descent) against direct computations on tiny networks: the Hessian of the
split network's loss by autodiff, and finite differences of the loss of real splits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensemble.growth.split import grow_model, split_units, widen_inputs
from ensemble.growth.splitting import (
    layer_terms,
    most_negative_units,
    splitting_index,
    splitting_matrices,
)
from ensemble.model.fused import FusedMLP

ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def toy(rows=64, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.3)
    return x, y


def model(hidden=(3,), activation="tanh", members=2, seed=1, features=4):
    return FusedMLP(
        members, features, hidden, task="multiclass", num_classes=3, activation=activation, seed=seed
    )


def member_loss_np(weights, x, y, activation="tanh"):
    """Mean cross-entropy of one member given `keras.Sequential`-order weights, in float64 NumPy."""
    a = np.asarray(x, "float64")
    for w, b in zip(weights[:-2:2], weights[1:-2:2], strict=True):
        a = ACTIVATIONS[activation](a @ w + b)
    logits = a @ weights[-2] + weights[-1]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean()


def split_loss_hessian(weights, x, y, layer, unit):
    """Direct reference: the Hessian over `d (D,)` at 0 of the member's loss after replacing `unit` of hidden
    layer `layer` by the copies `theta + d` and `theta - d`, each with half the outgoing weights (autodiff, float64)."""
    weights = [tf.constant(w, tf.float64) for w in weights]
    w_in, b_in = weights[2 * layer], weights[2 * layer + 1]
    d = tf.Variable(tf.zeros(w_in.shape[0] + 1, tf.float64))

    def loss():
        a = tf.constant(x, tf.float64)
        for i in range(len(weights) // 2 - 1):
            w, b = weights[2 * i], weights[2 * i + 1]
            if i == layer:
                plus = tf.tanh(a @ (w_in[:, unit] + d[:-1])[:, None] + b_in[unit] + d[-1])  # (B, 1)
                minus = tf.tanh(a @ (w_in[:, unit] - d[:-1])[:, None] + b_in[unit] - d[-1])
                kept = tf.tanh(a @ w + b) * tf.one_hot(unit, w.shape[1], 0.0, 1.0, dtype=tf.float64)
                a = tf.concat(
                    [kept, plus, minus], axis=1
                )  # the unit's own column is zeroed, its halves appended
                nxt = weights[2 * i + 2]
                weights_next = tf.concat([nxt, nxt[unit : unit + 1] / 2, nxt[unit : unit + 1] / 2], axis=0)
            else:
                w = weights_next if i == layer + 1 else w
                a = tf.tanh(a @ w + b)
        head = weights_next if layer == len(weights) // 2 - 2 else weights[-2]
        logits = a @ head + weights[-1]
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = loss()
        grad = inner.gradient(value, d)
    return outer.jacobian(grad, d).numpy()


@pytest.mark.parametrize("hidden, layer", [((3,), 0), ((3, 4), 0), ((3, 4), 1)])
def test_splitting_matrices_equal_the_autodiff_hessian_of_the_split_loss(hidden, layer):
    x, y = toy()
    net = model(hidden)
    inputs, weights = layer_terms(net, x, y, layer)
    matrices = splitting_matrices(inputs, weights)  # (N, H, D, D)
    index = splitting_index(net, x, y, layer)
    for n in range(net.members):
        member = net.member_weights(n)
        for unit in range(hidden[layer]):
            reference = split_loss_hessian(member, x, y, layer, unit)
            np.testing.assert_allclose(matrices[n, unit], reference, atol=2e-6, rtol=1e-3)
            assert index.eigenvalues[n, unit] == pytest.approx(np.linalg.eigvalsh(reference)[0], abs=2e-6)


def test_splitting_index_predicts_the_loss_change_of_a_split_by_finite_differences():
    """`L(split along v by +/- s) - L = s^2 / 2 v'Sv + O(s^4)`, with the real `split_units` and eigenvector `v`."""
    x, y = toy(rows=128)
    net = model((4,), members=1)
    index = splitting_index(net, x, y, 0)
    unit = int(np.argmin(index.eigenvalues[0]))
    w_in, b_in, w_out, b_out = net.member_weights(0)
    theta_norm = np.linalg.norm(np.append(w_in[:, unit], b_in[unit]))
    before = member_loss_np([w_in, b_in, w_out, b_out], x, y)
    assert index.eigenvalues[0, unit] < 0
    for delta in (0.02, 0.01):
        split = split_units(
            w_in[None].astype("float64"),
            b_in[None].astype("float64"),
            w_out[None].astype("float64"),
            np.array([[unit]]),
            noise=0.0,
            directions=index.directions[:, [unit]],
            delta=delta,
        )
        after = member_loss_np([split.w_in[0], split.b_in[0], split.w_out[0], b_out], x, y)
        predicted = (delta * theta_norm) ** 2 / 2 * index.eigenvalues[0, unit]
        assert after - before == pytest.approx(predicted, rel=0.02)


def test_split_along_directions_keeps_the_function_as_delta_goes_to_zero():
    rng = np.random.default_rng(3)
    w_in, b_in, w_out = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4, 3))
    x = rng.normal(size=(50, 5))
    units = np.array([[0, 2], [1, 3]])
    directions = rng.normal(size=(2, 2, 6))
    directions /= np.linalg.norm(directions, axis=2, keepdims=True)

    def outputs(w_i, b_i, w_o):
        return np.tanh(x @ w_i + b_i[:, None, :]) @ w_o  # (N, B, out)

    reference = outputs(w_in, b_in, w_out)
    changes = []
    for delta in (0.0, 1e-1, 1e-2, 1e-3):
        split = split_units(w_in, b_in, w_out, units, noise=0.0, directions=directions, delta=delta)
        changes.append(np.abs(outputs(*split[:3]) - reference).max())
        moved = split.w_in[:, :, 4:] - np.take_along_axis(w_in, units[:, None, :], axis=2)
        for n in range(2):  # the two copies sit symmetrically around the unit
            np.testing.assert_allclose(
                split.w_in[n][:, units[n]] + split.w_in[n][:, 4:], 2 * w_in[n][:, units[n]]
            )
        assert (
            np.abs(moved).max()
            <= delta * np.linalg.norm(np.concatenate([w_in, b_in[:, None]], 1), axis=1).max()
        )
    assert changes[0] <= 1e-12  # exact at delta = 0
    assert changes[1] > 0 and changes[2] < changes[1] / 50 and changes[3] < changes[2] / 50  # O(delta^2)


def test_outgoing_offsets_on_a_split_along_directions_change_the_function_to_first_order_in_delta():
    """Why `splitting` runs without `noise`: offsets `w/2 +/- d` on copies whose incoming weights differ by
    `+/- delta` change the outputs by `d (h+ - h-)` = O(delta), not O(delta^2)."""
    rng = np.random.default_rng(3)
    w_in, b_in, w_out = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4, 3))
    x = rng.normal(size=(50, 5))
    units = np.array([[0, 2], [1, 3]])
    directions = rng.normal(size=(2, 2, 6))
    directions /= np.linalg.norm(directions, axis=2, keepdims=True)

    def change(noise: float, delta: float) -> float:
        split = split_units(w_in, b_in, w_out, units, rng=0, noise=noise, directions=directions, delta=delta)
        before = np.tanh(x @ w_in + b_in[:, None, :]) @ w_out  # (N, B, out)
        return np.abs(np.tanh(x @ split.w_in + split.b_in[:, None, :]) @ split.w_out - before).max()

    for noise, order in ((1.0, 1), (0.0, 2)):
        ratio = change(noise, 1e-2) / change(noise, 1e-3)  # 10 ** order
        assert 10**order / 2 < ratio < 10**order * 2, (noise, ratio)
    assert change(1.0, 0.0) <= 1e-12  # offsets alone keep the function


def test_grow_model_with_directions_in_two_layers_keeps_the_function_as_delta_goes_to_zero():
    x, y = toy()
    net = model((3, 4), members=2)
    units = {0: np.array([[0, 2], [1, 2]]), 1: np.array([[1], [3]])}
    directions = {
        layer: np.take_along_axis(splitting_index(net, x, y, layer).directions, u[:, :, None], axis=1)
        for layer, u in units.items()
    }
    xs = np.broadcast_to(x, (2, *x.shape))
    before = keras.ops.convert_to_numpy(net(xs))
    changes = []
    for delta in (1e-1, 1e-2):
        grown, _ = grow_model(
            net, keras.optimizers.Adam(), units, noise=0.0, directions=directions, delta=delta
        )
        assert grown.hidden_units == [5, 5]
        changes.append(np.abs(keras.ops.convert_to_numpy(grown(xs)) - before).max())
    assert changes[1] < changes[0] / 30 and changes[1] < 1e-3


def test_widen_inputs_keeps_the_projection_of_the_widened_layer_input():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 10, 3))  # (N, B, H) the layer's inputs before the layer below is split
    source_index = np.array([[0, 1, 2, 0, 2], [0, 1, 2, 1, 1]])[
        :, :4
    ]  # member 0 splits unit 0, member 1 unit 1
    directions = rng.normal(size=(2, 2, 4))  # (N, k, H + 1)
    wide = np.take_along_axis(h, source_index[:, None, :], axis=2)  # copies repeat their source's activation
    widened = widen_inputs(directions, source_index)
    assert widened.shape == (2, 2, 5)
    aug, wide_aug = (
        np.concatenate([h, np.ones((2, 10, 1))], 2),
        np.concatenate([wide, np.ones((2, 10, 1))], 2),
    )
    np.testing.assert_allclose(wide_aug @ widened.transpose(0, 2, 1), aug @ directions.transpose(0, 2, 1))


def test_relu_splitting_index_estimates_the_loss_change_of_a_split():
    """ReLU's sigma'' is a Dirac delta: the kernel estimate still predicts a real split's loss change (the sign and,
    within 50 %, the size: both the estimate and the finite split see only the few rows near the kink)."""
    x, y = toy(rows=4000, seed=5)
    net = model((6,), activation="relu", members=1, seed=2)
    index = splitting_index(net, x, y, 0, max_rows=None)
    unit = int(np.argmin(index.eigenvalues[0]))
    w_in, b_in, w_out, b_out = (w.astype("float64") for w in net.member_weights(0))
    theta_norm = np.linalg.norm(np.append(w_in[:, unit], b_in[unit]))
    before = member_loss_np([w_in, b_in, w_out, b_out], x, y, "relu")
    delta = 0.05
    split = split_units(
        w_in[None],
        b_in[None],
        w_out[None],
        [[unit]],
        noise=0.0,
        directions=index.directions[:, [unit]],
        delta=delta,
    )
    after = member_loss_np([split.w_in[0], split.b_in[0], split.w_out[0], b_out], x, y, "relu")
    predicted = (delta * theta_norm) ** 2 / 2 * index.eigenvalues[0, unit]
    assert predicted < 0 and after - before == pytest.approx(predicted, rel=0.5)


def test_most_negative_units_picks_the_smallest_index_per_member():
    values = np.array([[0.5, -2.0, -1.0, 0.0], [-3.0, 1.0, -3.0, -0.1]])
    np.testing.assert_array_equal(most_negative_units(values, 2), [[1, 2], [0, 2]])
    with pytest.raises(ValueError, match=r"Argument `k` must be in \[1, 4\]"):
        most_negative_units(values, 5)


def test_splitting_index_rejects_a_layer_that_does_not_exist():
    x, y = toy()
    with pytest.raises(ValueError, match=r"Argument `layer` must be a hidden layer index in \[0, 1\)"):
        splitting_index(model((3,)), x, y, 1)
