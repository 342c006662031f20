"""The fused MLP against plain Keras layers: initialisation, forward pass, export, saving, validation."""

import warnings

import keras
import numpy as np
import pytest

from ensemble.model.fused import (
    FusedDense,
    FusedMLP,
    MemberwiseInitializer,
    derive_seed,
    load_fused,
    member_seed,
    weights_follow,
)


def perturb_weights(model: FusedMLP, seed: int = 0) -> None:
    """Give every weight a random offset, so a test cannot pass on the seeded initial values alone."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(variable.numpy() + 0.3 * rng.normal(size=variable.shape).astype("float32"))


# --- initialisation ------------------------------------------------------------------------------------------------


def test_member_kernel_std_matches_a_plain_dense_layer():
    # Wide layers (>= 6000 entries each) so a 10% tolerance is ~8 standard errors of the std estimate.
    model = FusedMLP(4, 64, (128, 96), task="multiclass", num_classes=64, seed=0)
    for layer, (fan_in, fan_out) in zip(model.dense_layers, [(64, 128), (128, 96), (96, 64)], strict=True):
        dense = keras.layers.Dense(fan_out, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
        dense.build((None, fan_in))
        dense_std = float(np.std(dense.kernel.numpy()))
        assert dense_std == pytest.approx(np.sqrt(2.0 / (fan_in + fan_out)), rel=0.1)  # Glorot's own variance
        for n in range(model.members):
            assert float(np.std(layer.kernel.numpy()[n])) == pytest.approx(dense_std, rel=0.1)


def test_member_slice_is_exactly_the_seeded_glorot_kernel():
    model = FusedMLP(3, 5, (7, 4), task="multiclass", num_classes=3, member_seeds=[10, 20, 30])
    for layer_index, layer in enumerate(model.dense_layers):
        fan_in = layer.kernel.shape[1]
        for n, seed in enumerate(model.member_seeds):
            initializer = keras.initializers.GlorotUniform(seed=derive_seed(seed, layer_index))
            expected = initializer((fan_in, layer.units))
            np.testing.assert_array_equal(layer.kernel.numpy()[n], np.asarray(expected))
            np.testing.assert_array_equal(layer.bias.numpy()[n], np.zeros(layer.units))


def test_members_start_different_and_seeds_reproduce():
    model = FusedMLP(3, 6, (8,), task="binary", seed=4)
    kernels = model.hidden_layers[0].kernel.numpy()
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    assert model.member_seeds == [member_seed(4, n) for n in range(3)]
    again = FusedMLP(3, 6, (8,), task="binary", seed=4)
    np.testing.assert_array_equal(again.hidden_layers[0].kernel.numpy(), kernels)
    # Member n's weights depend on its own seed only: a larger ensemble starts with the same first members.
    larger = FusedMLP(5, 6, (8,), task="binary", seed=4)
    np.testing.assert_array_equal(larger.hidden_layers[0].kernel.numpy()[:3], kernels)


def test_different_model_seeds_share_no_member_initialisation():
    # With `seed + n`, member 0 of seed 1 started from exactly member 1 of seed 0's weights.
    first, second = (FusedMLP(4, 6, (8,), task="binary", seed=s) for s in (0, 1))
    assert not set(first.member_seeds) & set(second.member_seeds)
    for n in range(4):
        for m in range(4):
            assert not np.allclose(first.member_weights(n)[0], second.member_weights(m)[0])


def test_member_seed_is_a_stable_31_bit_function_of_model_seed_and_member():
    seeds = {member_seed(s, n) for s in range(20) for n in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**31 for s in seeds)
    assert member_seed(0, 1) == member_seed(0, 1) != member_seed(1, 0)


def test_derive_seed_is_a_stable_31_bit_function_of_member_and_layer():
    seeds = {derive_seed(m, layer) for m in range(20) for layer in range(4)}
    assert len(seeds) == 80 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(3, 1) == derive_seed(3, 1) != derive_seed(1, 3)


def test_memberwise_initializer_rejects_a_shape_without_the_member_axis():
    with pytest.raises(ValueError, match=r"expects a shape \(N=2, in, out\). Received: shape=\(4, 3\)"):
        MemberwiseInitializer("glorot_uniform", seeds=[1, 2])((4, 3))


# --- forward pass and export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_member_model_predicts_what_predict_members_gives(task):
    model = FusedMLP(3, 4, (6, 5), task=task, num_classes=3, seed=2)
    perturb_weights(model)
    x = np.random.default_rng(1).normal(size=(17, 4)).astype("float32")
    fused = model.predict_members(x)
    for n in range(model.members):
        exported = model.member_model(n).predict(x, verbose=0)  # binary: P(class 1) (B, 1)
        expected = (
            fused[n][:, None] if task == "regression" else fused[n][:, 1:] if task == "binary" else fused[n]
        )
        np.testing.assert_allclose(exported, expected, atol=1e-5)


def test_fused_forward_equals_member_by_member_numpy_reference():
    model = FusedMLP(2, 3, (4,), task="multiclass", num_classes=3, activation="tanh", seed=0)
    perturb_weights(model)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")  # one batch per member
    logits = np.asarray(model(x))  # (N, B, C)
    for n in range(2):
        w0, b0, w1, b1 = model.member_weights(n)
        np.testing.assert_allclose(logits[n], np.tanh(x[n] @ w0 + b0) @ w1 + b1, atol=1e-5)


def test_predict_members_shapes_and_chunking():
    model = FusedMLP(3, 4, (5,), task="binary")
    x = np.random.default_rng(0).normal(size=(10, 4))
    probs = model.predict_members(x)
    assert probs.shape == (3, 10, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    np.testing.assert_allclose(model.predict_members(x, batch_size=3), probs, atol=1e-6)
    linear = FusedMLP(2, 4, (), task="regression")  # no hidden layer
    assert linear.predict_members(x).shape == (2, 10)


@pytest.mark.parametrize(
    ("task", "logit"), [("binary", -1000.0), ("binary", 1000.0), ("multiclass", -1000.0)]
)
def test_confident_members_give_exact_log_probabilities_without_overflow(task, logit):
    model = FusedMLP(2, 3, (4,), task=task, num_classes=3, seed=0)
    model.head.kernel.assign(np.zeros(model.head.kernel.shape))
    bias = np.zeros(model.head.bias.shape, "float32")  # (N, out): member logits independent of x
    bias[:, -1] = logit
    model.head.bias.assign(bias)
    x = np.random.default_rng(0).normal(size=(5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old `1 / (1 + exp(-z))` overflowed at z = -1000
        log_probs = model.predict_members(x, log_probs=True)
        probs = model.predict_members(x)
    expected = [0.0, -1000.0] if logit < 0 else [-1000.0, 0.0]  # [log(1 - p), log p], exact
    if task == "multiclass":
        expected = [-np.log(2.0), -np.log(2.0), -1000.0 - np.log(2.0)]
    np.testing.assert_allclose(log_probs, np.broadcast_to(expected, log_probs.shape), rtol=1e-12)
    np.testing.assert_array_equal(probs, np.exp(log_probs))
    assert np.isfinite(log_probs).all()


def test_predict_members_log_probabilities_are_the_logs_of_the_member_models_probabilities():
    model = FusedMLP(3, 4, (6,), task="multiclass", num_classes=4, seed=2)
    perturb_weights(model)
    x = np.random.default_rng(1).normal(size=(7, 4)).astype("float32")
    log_probs = model.predict_members(x, log_probs=True)  # (N, B, C)
    for n in range(3):
        np.testing.assert_allclose(
            np.exp(log_probs[n]), model.member_model(n).predict(x, verbose=0), atol=1e-6
        )
    regression = FusedMLP(2, 4, (5,), task="regression")
    np.testing.assert_array_equal(
        regression.predict_members(x, log_probs=True), regression.predict_members(x)
    )


def test_predict_members_rejects_wrong_feature_count():
    model = FusedMLP(3, 4, (5,), task="binary")
    with pytest.raises(ValueError, match=r"Expected features of shape \(B, 4\) or \(3, B, 4\)"):
        model.predict_members(np.zeros((10, 5)))


# --- saving --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_save_load_round_trip_keeps_predictions_and_config(task, tmp_path):
    model = FusedMLP(3, 4, (6, 5), task=task, activation="tanh", member_seeds=[3, 1, 4], name="ens")
    perturb_weights(model)
    x = np.random.default_rng(2).normal(size=(9, 4)).astype("float32")
    path = tmp_path / "fused.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, FusedMLP) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict_members(x), model.predict_members(x))
    for n in range(3):
        np.testing.assert_allclose(
            loaded.member_model(n).predict(x, verbose=0), model.member_model(n).predict(x, verbose=0)
        )


def test_get_config_round_trip_rebuilds_the_same_initial_model():
    model = FusedMLP(2, 3, (4, 4), task="multiclass", num_classes=4, activation="tanh", seed=9)
    clone = FusedMLP.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"members": 0}, r"Argument `members` must be an int >= 1. Received: members=0"),
        ({"members": 2.7}, r"Argument `members` must be an int >= 1. Received: members=2.7"),
        ({"input_dim": 0}, r"Argument `input_dim` must be an int >= 1. Received: input_dim=0"),
        (
            {"hidden_units": (8, 0)},
            r"Argument `hidden_units\[1\]` must be an int >= 1. Received: hidden_units\[1\]=0",
        ),
        ({"task": "clustering"}, r"Argument `task` must be one of .* Received: task='clustering'"),
        ({"task": "multiclass", "num_classes": 1}, r"`num_classes` must be >= 2 for multiclass"),
        ({"activation": "nope"}, r"Could not interpret activation function identifier: nope"),
        ({"member_seeds": [1, 2]}, r"`member_seeds` must have one seed per member \(3\). Received 2"),
    ],
)
def test_fused_mlp_rejects_bad_arguments(kwargs, match):
    arguments = {"members": 3, "input_dim": 4, "hidden_units": (5,), "task": "binary", **kwargs}
    with pytest.raises(ValueError, match=match):
        FusedMLP(**arguments)


def test_fused_dense_rejects_zero_units_and_no_seeds():
    with pytest.raises(ValueError, match=r"Argument `units` must be an int >= 1. Received: units=0"):
        FusedDense(0, seeds=[1])
    with pytest.raises(ValueError, match=r"Argument `seeds` must hold one seed per member"):
        FusedDense(3, seeds=[])


def test_member_model_rejects_out_of_range_member():
    with pytest.raises(ValueError, match=r"Argument `n` must be in \[0, 2\). Received: n=2"):
        FusedMLP(2, 3, (4,), task="binary").member_model(2)


def test_load_fused_restores_the_saved_weights_without_drawing_new_ones(tmp_path):
    model = FusedMLP(4, 3, [5], task="multiclass", num_classes=3, seed=7)
    model.save(tmp_path / "model.keras")
    loaded = load_fused(tmp_path / "model.keras")
    for saved, restored in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    assert loaded.get_config() == model.get_config()  # the initialiser it reports is unchanged
    plain = keras.saving.load_model(tmp_path / "model.keras")
    for saved, restored in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)


def test_only_models_built_inside_weights_follow_skip_the_random_initialisation():
    with weights_follow():
        skipped = FusedMLP(2, 3, [4], seed=1)
    drawn = FusedMLP(2, 3, [4], seed=1)
    assert not np.any(skipped.hidden_layers[0].kernel.numpy())
    assert np.all(np.abs(drawn.hidden_layers[0].kernel.numpy()).sum(axis=(1, 2)) > 0)
