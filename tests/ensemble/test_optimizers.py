"""The fused optimiser kernels against Keras' own `optimizer.apply` (the reference)."""

import keras
import numpy as np
import pytest

import ensemble.optim.optimizers
from ensemble.model.fused import FusedMLP
from ensemble.optim.optimizers import apply_gradients, check_elementwise, fused_kind
from ensemble.training.train import TrainConfig, fit

OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adam-schedule": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecayRestarts(0.02, first_decay_steps=40)
    ),
    "sgd": lambda: keras.optimizers.SGD(0.05),
    "momentum": lambda: keras.optimizers.SGD(0.02, momentum=0.9),
    "nesterov": lambda: keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_apply_gradients_equals_optimizer_apply(name):
    rng = np.random.default_rng(0)
    shapes = [(3, 4, 5), (3, 5)]
    start = [rng.normal(size=shape).astype("float32") for shape in shapes]
    fused_vars = [keras.Variable(w) for w in start]
    keras_vars = [keras.Variable(w) for w in start]
    fused_opt, keras_opt = OPTIMIZERS[name](), OPTIMIZERS[name]()
    fused_opt.build(fused_vars)
    keras_opt.build(keras_vars)

    for _ in range(30):
        grads = [rng.normal(size=shape).astype("float32") for shape in shapes]
        apply_gradients(fused_opt, grads, fused_vars)
        keras_opt.apply(grads, keras_vars)

    # Not bit-exact for Adam: `ResourceApplyAdam` forms `1 - beta_2` from float32 `beta_2` (0.00099998713),
    # Keras in float64 (0.001), so v differs by ~1.3e-5 relative and each step by ~1e-7 * lr.
    assert int(fused_opt.iterations) == int(keras_opt.iterations) == 30
    for fused_var, keras_var in zip(fused_vars, keras_vars, strict=True):
        np.testing.assert_allclose(fused_var.numpy(), keras_var.numpy(), atol=1e-5)
    for fused_slot, keras_slot in zip(fused_opt.variables, keras_opt.variables, strict=True):
        np.testing.assert_allclose(np.asarray(fused_slot), np.asarray(keras_slot), rtol=1e-4, atol=1e-6)


def train_fused(make_optimizer, monkeypatch=None):
    """Two epochs on a small binary problem; with `monkeypatch`, force the `optimizer.apply` path."""
    declined = []
    if monkeypatch is not None:
        monkeypatch.setattr(
            ensemble.optim.optimizers, "fused_kind", lambda optimizer: declined.append(optimizer)
        )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4)).astype("float32")
    y = (x[:, 0] * x[:, 1] > 0).astype("int64")
    model = FusedMLP(3, 4, (6, 6), task="binary", activation="tanh", seed=2)
    fit(model, x, y, optimizer=make_optimizer(), config=TrainConfig(epochs=2, train_metrics=False))
    assert bool(declined) == (monkeypatch is not None)  # the step loop really took the `optimizer.apply` path
    return [model.member_weights(n) for n in range(3)]


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_fused_kernel_training_equals_keras_apply_training(name, monkeypatch):
    fused = train_fused(OPTIMIZERS[name])
    reference = train_fused(OPTIMIZERS[name], monkeypatch)
    for n in range(3):
        for a, b in zip(fused[n], reference[n], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(fused[0][0] - fused[1][0]).max() > 1e-2


@pytest.mark.parametrize(
    "optimizer, kind",
    [
        (keras.optimizers.Adam(), "adam"),
        (keras.optimizers.Adam(amsgrad=True), None),
        (keras.optimizers.AdamW(), None),
        (keras.optimizers.Adam(clipvalue=1.0), None),
        (keras.optimizers.Adam(use_ema=True), None),
        (keras.optimizers.SGD(), "sgd"),
        (keras.optimizers.SGD(momentum=0.5), "momentum"),
        (keras.optimizers.SGD(momentum=0.5, nesterov=True), "momentum"),
        (keras.optimizers.RMSprop(), None),
    ],
    ids=["adam", "amsgrad", "adamw", "clipvalue", "ema", "sgd", "momentum", "nesterov", "rmsprop"],
)
def test_fused_kind_only_claims_exact_formulas(optimizer, kind):
    assert fused_kind(optimizer) == kind


def test_fallback_optimizer_trains_through_optimizer_apply():
    variables = [keras.Variable(np.ones((2, 3), "float32"))]
    optimizer = keras.optimizers.RMSprop(0.1)
    optimizer.build(variables)
    reference = [keras.Variable(np.ones((2, 3), "float32"))]
    reference_optimizer = keras.optimizers.RMSprop(0.1)
    reference_optimizer.build(reference)
    grads = [np.full((2, 3), 0.5, "float32")]
    apply_gradients(optimizer, grads, variables)
    reference_optimizer.apply(grads, reference)
    np.testing.assert_array_equal(variables[0].numpy(), reference[0].numpy())
    assert not np.allclose(variables[0].numpy(), 1.0)


@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_check_elementwise_rejects_norm_clipping_by_name(option):
    with pytest.raises(ValueError, match=rf"`{option}=0.5` couples ensemble members.*Use `clipvalue`"):
        check_elementwise(keras.optimizers.SGD(**{option: 0.5}))


def test_check_elementwise_accepts_elementwise_options():
    for optimizer in (keras.optimizers.Adam(clipvalue=1.0), keras.optimizers.SGD(), keras.optimizers.AdamW()):
        check_elementwise(optimizer)
