"""The fused training loop against N separately trained `keras.Sequential` models (the slow obvious reference)."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensemble.evaluation.metrics import COMBINERS, evaluate_classification
from ensemble.growth.rounds import GrowthConfig, grow_rounds
from ensemble.model.fused import FusedMLP
from ensemble.training.train import (
    TrainConfig,
    check_training_data,
    compiled_scores,
    compiled_steps,
    epoch_indices,
    evaluate_members,
    fit,
    label_tensor,
    member_losses,
    member_rows,
)

MEMBERS = 3
FEATURES = 5
HIDDEN = (8, 6)


def make_data(rows: int, task: str, num_classes: int = 3, seed: int = 0):
    """Features `(rows, FEATURES)` and labels `(rows,)` that a small MLP can partly learn."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    score = x[:, 0] + 0.5 * x[:, 1] * x[:, 2]
    if task == "binary":
        y = (score > 0).astype("int64")
    elif task == "multiclass":
        y = np.digitize(score, np.quantile(score, np.linspace(0, 1, num_classes + 1)[1:-1])).astype("int64")
    else:
        y = (score + 0.1 * rng.normal(size=rows)).astype("float32")
    return x, y


def reference_member(model: FusedMLP, n: int) -> keras.Sequential:
    """Member n as a separately built Sequential: linear head (logits), weights copied before training."""
    layers = [keras.Input(shape=(model.input_dim,))]
    layers += [keras.layers.Dense(units, activation=model.activation) for units in model.hidden_units]
    layers.append(keras.layers.Dense(model.output_dim))
    reference = keras.Sequential(layers)
    reference.set_weights(model.member_weights(n))
    return reference


REFERENCE_LOSSES = {
    "binary": lambda: keras.losses.BinaryCrossentropy(from_logits=True),
    "multiclass": lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "regression": lambda: keras.losses.MeanSquaredError(),
}


def train_reference(model: FusedMLP, n: int, x, y, make_optimizer, config: TrainConfig) -> list[np.ndarray]:
    """Train member n alone with Keras `fit`, on exactly the rows and order the fused loop gives it."""
    reference = reference_member(model, n)
    reference.compile(optimizer=make_optimizer(), loss=REFERENCE_LOSSES[model.task]())
    orders = [
        epoch_indices(len(x), model.members, config.batch_size, epoch, config.seed, config.bagging)[:, n, :]
        for epoch in range(config.epochs)
    ]  # each (steps, B)
    rows = np.concatenate(orders).reshape(-1)
    targets = y[rows].astype("float32" if model.task != "multiclass" else "int64")
    if model.task != "multiclass":
        targets = targets[:, None]
    reference.fit(x[rows], targets, batch_size=config.batch_size, shuffle=False, epochs=1, verbose=0)
    return reference.get_weights()


def max_weight_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [w.shape for w in a] == [w.shape for w in b]
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True))


def max_relative_weight_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """`max_weight_difference` over the reference `b`'s largest weight magnitude (at least 1): float32 rounding in a
    long run with a large learning rate grows with the weights (on some CPUs' kernels more than on others)."""
    return max_weight_difference(a, b) / max(1.0, max(float(np.abs(v).max()) for v in b))


# --- equivalence with separate Keras models -------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, make_optimizer, batch_size, bagging",
    [
        ("binary", lambda: keras.optimizers.Adam(0.01), 1, False),
        ("binary", lambda: keras.optimizers.SGD(0.02, momentum=0.9), 1, False),
        ("multiclass", lambda: keras.optimizers.SGD(0.02, momentum=0.8, nesterov=True), 1, False),
        ("regression", lambda: keras.optimizers.Adam(0.005), 4, False),
        ("multiclass", lambda: keras.optimizers.Adam(0.01), 2, True),
    ],
    ids=[
        "binary-adam-b1",
        "binary-momentum-b1",
        "multiclass-nesterov-b1",
        "regression-adam-b4",
        "bagging-b2",
    ],
)
def test_fused_members_equal_separately_trained_sequential_models(task, make_optimizer, batch_size, bagging):
    rows = 150 * batch_size  # 2 epochs of 150 steps = 300 steps per member
    x, y = make_data(rows, task)
    # tanh (the seed's activation), not relu: float32 rounding differs between a batched and a plain matmul by
    # ~1e-7, and a relu pre-activation that lands within that of 0 flips the unit and the runs part by ~1e-3.
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task=task, num_classes=3, activation="tanh", seed=7)
    config = TrainConfig(epochs=2, batch_size=batch_size, bagging=bagging, seed=3, steps_per_call=64)
    references = [train_reference(model, n, x, y, make_optimizer, config) for n in range(MEMBERS)]

    fit(model, x, y, optimizer=make_optimizer(), config=config)

    for n in range(MEMBERS):
        assert max_weight_difference(model.member_weights(n), references[n]) < 1e-4, f"member {n}"
    assert (
        max_weight_difference(model.member_weights(0), model.member_weights(1)) > 1e-2
    )  # they did train apart


def test_training_moves_the_weights_and_lowers_the_loss():
    x, y = make_data(300, "binary")
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="binary", seed=0)
    before = [model.member_weights(n) for n in range(MEMBERS)]
    history = fit(model, x, y, optimizer=keras.optimizers.Adam(0.01), config=TrainConfig(epochs=3))
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert all(max_weight_difference(before[n], model.member_weights(n)) > 1e-3 for n in range(MEMBERS))


# --- member independence ----------------------------------------------------------------------------------------


def test_changing_only_member_0s_data_leaves_other_members_bit_identical():
    x, y = make_data(120, "binary")
    # Rows [120, 240) are a perturbed copy: other features and flipped labels. Only member 0 is pointed at them.
    x_both = np.concatenate([x, x + np.float32(0.5)])
    y_both = np.concatenate([y, 1 - y]).astype("int32")
    indices = epoch_indices(120, MEMBERS, 1, 0, 0, False)  # (steps, N, B)
    shifted = indices.copy()
    shifted[:, 0, :] += 120

    trained = []
    for batch_indices in (indices, shifted):
        model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="binary", seed=5)
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        run_steps = compiled_steps(model, optimizer, TrainConfig())
        run_steps(tf.constant(x_both), tf.constant(y_both), tf.constant(batch_indices), len(batch_indices))
        trained.append([model.member_weights(n) for n in range(MEMBERS)])

    assert max_weight_difference(trained[0][0], trained[1][0]) > 1e-3  # member 0 did see other data
    for n in range(1, MEMBERS):
        assert max_weight_difference(trained[0][n], trained[1][n]) <= 1e-7, f"member {n}"


def test_changing_member_0s_seed_leaves_other_members_unchanged():
    x, y = make_data(100, "multiclass")
    config = TrainConfig(epochs=2, train_metrics=False)
    trained = []
    for first_seed in (11, 99):
        model = FusedMLP(
            MEMBERS, FEATURES, HIDDEN, task="multiclass", num_classes=3, member_seeds=[first_seed, 1, 2]
        )
        fit(model, x, y, optimizer=keras.optimizers.Adam(0.01), config=config)
        trained.append([model.member_weights(n) for n in range(MEMBERS)])
    assert max_weight_difference(trained[0][0], trained[1][0]) > 1e-3
    for n in range(1, MEMBERS):
        assert max_weight_difference(trained[0][n], trained[1][n]) <= 1e-7, f"member {n}"


def test_member_order_does_not_depend_on_other_members():
    few = epoch_indices(50, 2, 1, epoch=3, seed=4, bagging=True)
    many = epoch_indices(50, 6, 1, epoch=3, seed=4, bagging=True)
    np.testing.assert_array_equal(few, many[:, :2])


def test_member_losses_are_independent_per_member_means():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 1)).astype("float32")  # (N, B, 1)
    y = rng.integers(0, 2, size=(3, 4))
    expected = [
        np.mean(
            [
                np.log1p(np.exp(-z)) if t else np.log1p(np.exp(z))
                for z, t in zip(logits[n, :, 0], y[n], strict=True)
            ]
        )
        for n in range(3)
    ]
    np.testing.assert_allclose(member_losses("binary", y, logits).numpy(), expected, rtol=1e-5)


# --- index streams -----------------------------------------------------------------------------------------------


def test_epoch_indices_shape_and_each_member_sees_every_row_once():
    indices = epoch_indices(103, 4, 5, epoch=0, seed=1, bagging=False)
    assert (
        indices.shape == (20, 4, 5) and indices.dtype == np.int32
    )  # 103 // 5 steps, the last 3 rows dropped
    for n in range(4):
        seen = indices[:, n].reshape(-1)
        assert len(np.unique(seen)) == 100 and seen.max() < 103


def test_epoch_indices_reshuffle_each_epoch_and_differ_between_members():
    e0, e1 = (epoch_indices(40, 2, 1, epoch=e, seed=0, bagging=False) for e in (0, 1))
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0[:, 0], e0[:, 1])
    np.testing.assert_array_equal(e0, epoch_indices(40, 2, 1, epoch=0, seed=0, bagging=False))  # regenerable


def test_bagging_draws_one_bootstrap_per_member_and_reuses_it_every_epoch():
    rows = member_rows(200, 1, seed=0, bagging=True)
    assert len(np.unique(rows)) < 180  # a bootstrap repeats rows (expected ~126 distinct of 200)
    assert not np.array_equal(rows, member_rows(200, 2, seed=0, bagging=True))
    for epoch in (0, 1):
        seen = epoch_indices(200, 3, 1, epoch=epoch, seed=0, bagging=True)[:, 1, 0]
        np.testing.assert_array_equal(np.sort(seen), np.sort(rows))
    np.testing.assert_array_equal(member_rows(7, 0, seed=0, bagging=False), np.arange(7))


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["epochs", "batch_size", "steps_per_call"])
def test_train_config_rejects_non_positive_or_fractional_counts(name):
    with pytest.raises(ValueError, match=rf"Argument `{name}` must be an int >= 1. Received: {name}=0"):
        TrainConfig(**{name: 0})
    with pytest.raises(ValueError, match=rf"Argument `{name}` must be an int >= 1. Received: {name}=2.5"):
        TrainConfig(**{name: 2.5})  # not truncated to 2


def test_train_config_get_config_round_trip():
    config = TrainConfig(
        epochs=3, batch_size=2, bagging=True, seed=4, steps_per_call=10, combiner="geometric"
    )
    assert TrainConfig(**config.get_config()) == config


def test_train_config_rejects_an_unknown_combiner_and_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"`combiner` must be one of \('mean', 'geometric'\). Received: combiner='median'"
    ):
        TrainConfig(combiner="median")


@pytest.mark.parametrize(
    "x_shape, y_values, match",
    [
        ((10, 4), [0] * 10, r"`x_train` must have shape \(rows, 5\). Received: shape=\(10, 4\)"),
        ((10, 5), [0] * 9, r"`y_train` must have shape \(10,\). Received: shape=\(9,\)"),
        ((10, 5), [0] * 9 + [2], r"`y_train` labels must be in \[0, 2\). Received: \[0, 2\]"),
        ((10, 5), [0] * 9 + [-1], r"`y_train` labels must be in \[0, 2\). Received: \[-1, 0\]"),
        ((2, 5), [0, 1], r"`x_train` has 2 rows, fewer than batch_size=4"),
    ],
)
def test_check_training_data_rejects_bad_shapes_and_labels(x_shape, y_values, match):
    model = FusedMLP(2, FEATURES, (4,), task="binary")
    with pytest.raises(ValueError, match=match):
        check_training_data(model, np.zeros(x_shape, "float32"), np.asarray(y_values), batch_size=4)


def test_check_training_data_rejects_nan_regression_targets_and_fractional_class_labels():
    x = np.zeros((8, FEATURES), "float32")
    with pytest.raises(ValueError, match=r"`y_train` contains NaN or inf values"):
        check_training_data(FusedMLP(2, FEATURES, (4,), task="regression"), x, np.r_[np.zeros(7), np.nan], 4)
    with pytest.raises(ValueError, match=r"`y_train` must hold integer class labels.*1\.5"):
        check_training_data(FusedMLP(2, FEATURES, (4,), task="binary"), x, np.r_[np.zeros(7), 1.5], 4)


def test_fit_rejects_nan_features_before_training():
    x, y = make_data(20, "binary")
    x[3, 2] = np.nan
    model = FusedMLP(2, FEATURES, (4,), task="binary")
    before = model.member_weights(0)
    with pytest.raises(ValueError, match=r"`x_train` contains NaN or inf values"):
        fit(model, x, y, optimizer=keras.optimizers.Adam(), config=TrainConfig(epochs=1))
    assert max_weight_difference(before, model.member_weights(0)) == 0.0


def test_fit_rejects_bad_validation_data_with_val_in_the_message():
    x, y = make_data(20, "binary")
    model = FusedMLP(2, FEATURES, (4,), task="binary")
    with pytest.raises(ValueError, match=r"`y_val` must have shape \(5,\)"):
        fit(model, x, y, optimizer=keras.optimizers.Adam(), validation_data=(x[:5], y[:4]))


@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_fit_rejects_member_coupling_clipping(option):
    x, y = make_data(20, "binary")
    model = FusedMLP(2, FEATURES, (4,), task="binary")
    with pytest.raises(ValueError, match=rf"`{option}=1.0` couples ensemble members"):
        fit(model, x, y, optimizer=keras.optimizers.Adam(**{option: 1.0}), config=TrainConfig(epochs=1))


# --- history -------------------------------------------------------------------------------------------------------


def test_history_holds_per_member_arrays_and_one_learning_rate_per_step():
    x, y = make_data(60, "multiclass")
    model = FusedMLP(MEMBERS, FEATURES, (4,), task="multiclass", num_classes=3)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    config = TrainConfig(epochs=2, batch_size=2, steps_per_call=7)  # 30 steps per epoch: calls of 7,7,7,7,2
    history = fit(
        model,
        x,
        y,
        optimizer=keras.optimizers.Adam(schedule),
        config=config,
        validation_data=(x[:20], y[:20]),
    )

    logs = history.history
    assert len(logs["loss"]) == 2
    for key in ("member_loss", "member_accuracy", "member_val_loss", "member_val_accuracy"):
        assert all(np.shape(value) == (MEMBERS,) for value in logs[key]), key
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(logs[key], [np.mean(v) for v in logs[f"member_{key}"]], rtol=1e-6)
    assert 0.0 <= logs["val_ensemble_accuracy"][-1] <= 1.0
    assert history.steps == list(range(1, 61))
    expected_lrs = [
        float(schedule(step - 1)) for step in history.steps
    ]  # step k uses the LR at iteration k-1
    np.testing.assert_allclose(history.learning_rates, expected_lrs, rtol=1e-6)
    assert logs["lr"] == pytest.approx([expected_lrs[29], expected_lrs[59]])


def test_history_member_loss_is_each_members_mean_step_loss():
    x, y = make_data(40, "regression")
    model = FusedMLP(2, FEATURES, (4,), task="regression")
    history = fit(model, x, y, optimizer=keras.optimizers.SGD(0.0), config=TrainConfig(epochs=1))
    # With lr 0 the weights never move: the mean step loss is each member's MSE on the whole set.
    outputs = model.predict_members(x)  # (N, rows)
    np.testing.assert_allclose(history.history["member_loss"][0], ((outputs - y) ** 2).mean(1), rtol=1e-4)


def test_early_stopping_stops_training():
    x, y = make_data(30, "binary")
    model = FusedMLP(2, FEATURES, (4,), task="binary")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=1)
    history = fit(
        model,
        x,
        y,
        optimizer=keras.optimizers.Adam(0.01),
        config=TrainConfig(epochs=20),
        validation_data=(x, y),
        callbacks=[stop],
    )
    assert model.stop_training
    assert len(history.history["loss"]) == 2  # epoch 0 sets the best; epoch 1 fails to beat it by 10 -> stop
    assert len(history.learning_rates) == 2 * 30


def test_resume_with_initial_epoch_equals_one_uninterrupted_run():
    x, y = make_data(50, "binary")
    config = TrainConfig(epochs=3, train_metrics=False, steps_per_call=16)
    straight = FusedMLP(2, FEATURES, (4,), task="binary", seed=1)
    fit(straight, x, y, optimizer=keras.optimizers.Adam(0.01), config=config)

    resumed = FusedMLP(2, FEATURES, (4,), task="binary", seed=1)
    optimizer = keras.optimizers.Adam(0.01)
    fit(resumed, x, y, optimizer=optimizer, config=TrainConfig(epochs=1, train_metrics=False))
    history = fit(resumed, x, y, optimizer=optimizer, config=config, initial_epoch=1)

    assert history.steps[0] == 51 and len(history.history["loss"]) == 2
    for n in range(2):
        assert max_weight_difference(straight.member_weights(n), resumed.member_weights(n)) <= 1e-6


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_compiled_member_scores_equal_a_numpy_computation_from_the_member_outputs(task):
    x, y = make_data(40, task)
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task=task, num_classes=3, seed=3)
    scores = evaluate_members(model, x, y)

    probs = model.predict_members(x)  # (N, B, C), or (N, B) for regression
    if task == "regression":
        np.testing.assert_allclose(scores["loss"], ((probs - y) ** 2).mean(axis=1), rtol=1e-5)
        assert set(scores) == {"loss"}
        return
    picked = probs[:, np.arange(len(y)), y.astype(int)]
    np.testing.assert_allclose(scores["loss"], -np.log(picked).mean(axis=1), rtol=1e-4)
    np.testing.assert_array_equal(scores["accuracy"], (probs.argmax(-1) == y).mean(axis=1))
    assert scores["ensemble_accuracy"] == (probs.mean(0).argmax(-1) == y).mean()
    other = evaluate_members(model, x[:7], y[:7])  # another row count reuses the one compiled function
    np.testing.assert_array_equal(other["accuracy"], (probs[:, :7].argmax(-1) == y[:7]).mean(axis=1))


def combiner_accuracies(model: FusedMLP, x, y) -> dict[str, float]:
    """`ensemble.evaluation.metrics`' accuracy of each combiner on `model`'s members for rows `x`, labels `y`."""
    log_probs = model.predict_members(x, log_probs=True)
    return {m: evaluate_classification(log_probs, y, method=m, log_probs=True)["accuracy"] for m in COMBINERS}


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_compiled_ensemble_accuracy_combines_the_members_as_the_metrics_do_with_the_same_combiner(
    combiner, jit_compile
):
    x, y = make_data(200, "multiclass")
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="multiclass", num_classes=3, seed=3)
    expected = combiner_accuracies(model, x, y)
    assert len(set(expected.values())) == len(COMBINERS)  # these rows tell every combiner apart
    assert evaluate_members(model, x, y, jit_compile, combiner)["ensemble_accuracy"] == expected[combiner]


def test_live_ensemble_accuracy_and_growths_monitored_value_follow_the_configured_combiner():
    """`val_ensemble_accuracy` in `fit`'s logs (logged live as `val/ensemble_accuracy`) and the value growth rounds
    monitor, with `TrainConfig.combiner="geometric"`, are `ensemble.evaluation.metrics`' geometric accuracy, not the mean's."""
    x, y = make_data(60, "multiclass")
    x_val, y_val = make_data(200, "multiclass", seed=1)
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="multiclass", num_classes=3, seed=3)
    config = TrainConfig(epochs=1, batch_size=4, combiner="geometric")
    history = fit(
        model, x, y, optimizer=keras.optimizers.Adam(0.01), config=config, validation_data=(x_val, y_val)
    )

    expected = combiner_accuracies(model, x_val, y_val)
    assert expected["geometric"] != expected["mean"]
    assert history.history["val_ensemble_accuracy"] == [expected["geometric"]]
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x_val, y_val=y_val)
    growth = GrowthConfig(monitor="val_ensemble_accuracy", max_rounds=0)
    _, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth)
    assert rounds[0].val_start == expected["geometric"]  # measured on the model `fit` left


# --- XLA (jit_compile) -------------------------------------------------------------------------------------------


def py_function_tanh(t):
    """tanh through `tf.py_function`: a differentiable op that XLA has no kernel for, so compiling fails."""
    out = tf.py_function(tf.tanh, [t], t.dtype)
    out.set_shape(t.shape)
    return out


def xla_warnings(caplog, what: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ensemble.training.train" and what in r.getMessage()
    ]


def test_auto_jit_compile_trains_with_xla_and_matches_the_plain_graph(caplog):
    x, y = make_data(60, "multiclass")
    trained, histories = [], []
    for jit_compile in ("auto", False):
        model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="multiclass", num_classes=3, seed=2)
        config = TrainConfig(epochs=2, batch_size=2, steps_per_call=7, jit_compile=jit_compile)
        histories.append(
            fit(model, x, y, optimizer=keras.optimizers.Adam(0.01), config=config, validation_data=(x, y))
        )
        trained.append([model.member_weights(n) for n in range(MEMBERS)])

    assert TrainConfig().jit_compile == "auto"
    assert histories[0].uses_xla and not histories[1].uses_xla
    assert not xla_warnings(caplog, "XLA could not compile")
    for n in range(MEMBERS):
        assert max_weight_difference(trained[0][n], trained[1][n]) <= 1e-5, f"member {n}"
    for key in ("member_loss", "member_val_loss", "member_val_accuracy"):
        np.testing.assert_allclose(histories[0].history[key], histories[1].history[key], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(histories[0].learning_rates, histories[1].learning_rates, rtol=1e-7)


def test_auto_jit_compile_falls_back_to_the_plain_graph_with_one_warning_giving_the_reason(caplog):
    x, y = make_data(40, "binary")
    trained, histories = [], []
    for jit_compile in ("auto", False):
        model = FusedMLP(MEMBERS, FEATURES, (4,), task="binary", activation=py_function_tanh, seed=3)
        config = TrainConfig(epochs=2, steps_per_call=15, jit_compile=jit_compile)  # 3 calls per epoch
        with caplog.at_level("WARNING", logger="ensemble.training.train"):
            histories.append(
                fit(model, x, y, optimizer=keras.optimizers.Adam(0.01), config=config, validation_data=(x, y))
            )
        trained.append([model.member_weights(n) for n in range(MEMBERS)])

    assert not histories[0].uses_xla
    # The step loop says it once (first call), then runs the plain graph; "auto" scores members as a plain graph.
    (message,) = xla_warnings(caplog, "XLA could not compile the step loop of ")
    assert "EagerPyFunc" in message and "jit_compile=False" in message
    assert not xla_warnings(caplog, "XLA could not compile the member scores")
    for n in range(MEMBERS):  # the failed XLA attempt changed nothing: same weights as the plain graph run
        np.testing.assert_array_equal(
            np.concatenate([w.ravel() for w in trained[0][n]]),
            np.concatenate([w.ravel() for w in trained[1][n]]),
        )
    assert histories[0].steps == histories[1].steps == list(range(1, 81))


def test_jit_compile_true_raises_xlas_error_instead_of_falling_back():
    x, y = make_data(20, "binary")
    model = FusedMLP(2, FEATURES, (4,), task="binary", activation=py_function_tanh)
    with pytest.raises(tf.errors.InvalidArgumentError, match="EagerPyFunc"):
        fit(model, x, y, optimizer=keras.optimizers.Adam(), config=TrainConfig(epochs=1, jit_compile=True))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_jit_compile_accepts_only_true_false_or_auto(value):
    with pytest.raises(ValueError, match=r'`jit_compile` must be True, False or "auto"'):
        TrainConfig(jit_compile=value)


def test_growth_rounds_fall_back_once_and_retrace_grown_models_as_plain_graphs(caplog):
    x, y = make_data(48, "multiclass")
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:24], y_val=y[:24])
    model = FusedMLP(2, FEATURES, (4,), task="multiclass", num_classes=3, activation=py_function_tanh)
    # Nothing improves by 1.0: every round ends after one epoch.
    growth = GrowthConfig(min_delta=1.0, patience=1, max_rounds=2)
    config = TrainConfig(epochs=5, batch_size=8, train_metrics=False)
    with caplog.at_level("WARNING", logger="ensemble.training.train"):
        grown, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth)

    assert [r.widths for r in rounds] == [(4,), (8,), (16,)] and grown.hidden_units == [16]
    # Round 0 said it; the grown models of rounds 1 and 2 were traced as plain graphs without a new attempt.
    assert len(xla_warnings(caplog, "XLA could not compile the step loop")) == 1


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_auto_jit_compile_compiles_mixed_precision_members(policy, caplog):
    x, y = make_data(40, "binary")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        histories = []
        for jit_compile in ("auto", False):
            model = FusedMLP(2, FEATURES, (4,), task="binary", seed=1)
            config = TrainConfig(epochs=2, steps_per_call=16, jit_compile=jit_compile)
            history = fit(model, x, y, optimizer=keras.optimizers.Adam(0.01), config=config)
            histories.append(history)
    finally:
        keras.config.set_dtype_policy(previous)

    assert histories[0].uses_xla and not xla_warnings(caplog, "XLA could not compile")
    # Half-precision matmuls: XLA may fuse and round differently, so agreement is to half precision.
    for key in ("member_loss", "member_accuracy"):
        np.testing.assert_allclose(histories[0].history[key], histories[1].history[key], rtol=0.05, atol=0.05)


def test_compiled_scores_auto_falls_back_with_one_warning_and_scores_as_the_plain_graph(caplog):
    x, y = make_data(30, "multiclass")
    model = FusedMLP(2, FEATURES, (4,), task="multiclass", num_classes=3, activation=py_function_tanh)
    args = (tf.constant(x), label_tensor("multiclass", y))
    with caplog.at_level("WARNING", logger="ensemble.training.train"):
        auto = [compiled_scores(model, "auto")(*args) for _ in range(2)]
    plain = compiled_scores(model, False)(*args)

    (message,) = xla_warnings(caplog, "XLA could not compile the member scores of ")
    assert "EagerPyFunc" in message and not compiled_scores(model, "auto").uses_xla
    for scores in auto:
        np.testing.assert_array_equal(scores["loss"].numpy(), plain["loss"].numpy())
        np.testing.assert_array_equal(scores["correct"].numpy(), plain["correct"].numpy())
