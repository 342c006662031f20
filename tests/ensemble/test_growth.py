import dataclasses
import types

import keras
import numpy as np
import pytest

from ensemble.data import DataConfig, prepare_data
from ensemble.growth.rounds import (
    ANNEAL_TO,
    GrowthConfig,
    GrowthRound,
    RoundEnd,
    grow_rounds,
    grown_is_not_worse,
    planned_splits,
    round_stop_epoch,
    split_rows,
)
from ensemble.growth.split import (
    ScaledSchedule,
    grow_model,
    scale_learning_rate,
    split_slots,
    split_units,
    top_units,
)
from ensemble.growth.splitting import splitting_index
from ensemble.model.flops import ensemble_flops
from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.training import train

RNG = np.random.default_rng(1234)


def random_units(members: int, width: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(width, size=k, replace=False)) for _ in range(members)])


def outputs(model: FusedMLP, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(np.broadcast_to(x, (model.members, *x.shape))))


def toy_data(rows: int = 96, features: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)
    return x, np.minimum(y, classes - 1)


def trained_model(hidden=(4, 5), members=3, optimizer=None, epochs=2):
    x, y = toy_data()
    model = FusedMLP(members, x.shape[1], hidden, task="multiclass", num_classes=3, seed=7)
    optimizer = optimizer or keras.optimizers.Adam(1e-2)
    config = train.TrainConfig(epochs=epochs, batch_size=8, train_metrics=False, track_unit_gradients=True)
    history = train.fit(model, x, y, optimizer=optimizer, config=config)
    return model, optimizer, history, (x, y)


# ------------------------------------------------------------------------------------------------ pure functions


def loop_split(w_in, b_in, w_out, units, bias_nudge=0.0):
    """Slow reference: one member, one unit at a time, copies appended in order (no noise)."""
    new = []
    for n in range(w_in.shape[0]):
        wi, b, wo = list(w_in[n].T), list(b_in[n]), [row.copy() for row in w_out[n]]
        for u in units[n]:
            wi.append(w_in[n][:, u])
            b.append(b_in[n][u] - bias_nudge)
            b[u] = b_in[n][u] + bias_nudge
            wo[u] = w_out[n][u] / 2
            wo.append(w_out[n][u] / 2)
        new.append((np.array(wi).T, np.array(b), np.array(wo)))
    return [np.stack(parts) for parts in zip(*new, strict=True)]


@pytest.mark.parametrize("bias_nudge", [0.0, 0.001])
def test_split_units_without_noise_matches_loop_reference(bias_nudge):
    w_in, b_in, w_out = RNG.normal(size=(3, 5, 6)), RNG.normal(size=(3, 6)), RNG.normal(size=(3, 6, 4))
    units = random_units(3, 6, 2, seed=0)
    split = split_units(w_in, b_in, w_out, units, noise=0.0, bias_nudge=bias_nudge)
    for got, want in zip(split[:3], loop_split(w_in, b_in, w_out, units, bias_nudge), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(split.source_index[:, 6:], units)


def test_split_units_noise_keeps_outgoing_sums_and_differs_per_member():
    w_in, b_in, w_out = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 4)), RNG.normal(size=(2, 4, 3))
    units = np.array([[0, 2], [0, 2]])
    split = split_units(w_in, b_in, w_out, units, rng=0, noise=0.1)
    summed = split.w_out[:, [0, 2]] + split.w_out[:, 4:]  # original half + copy half
    np.testing.assert_allclose(summed, w_out[:, [0, 2]], atol=1e-12)
    d = split.w_out[:, [0, 2]] - w_out[:, [0, 2]] / 2
    assert np.abs(d).min() > 0 and not np.allclose(d[0], d[1])
    np.testing.assert_array_equal(split.w_out[:, [1, 3]], w_out[:, [1, 3]])  # unsplit rows untouched


def test_top_units_picks_the_largest_scores_per_member():
    scores = np.array([[0.1, 5.0, 3.0, 4.0], [9.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(top_units(scores, 2), [[1, 3], [0, 2]])  # tie 2/3 -> lower index
    scores = RNG.random((5, 7))
    for row, chosen in zip(scores, top_units(scores, 3), strict=True):
        assert set(chosen) == set(sorted(range(7), key=lambda u: -row[u])[:3])


@pytest.mark.parametrize(
    "units, message",
    [
        (np.array([[0, 0]]), "must not list a unit twice"),
        (np.array([[0, 4]]), r"indices in \[0, 4\)"),
        (np.array([0, 1]), r"must have shape \(N=1, k>=1\)"),
        (np.array([[0.0, 1.0]]), "integer unit indices"),
    ],
)
def test_split_units_rejects_bad_units(units, message):
    with pytest.raises(ValueError, match=message):
        split_units(np.zeros((1, 2, 4)), np.zeros((1, 4)), np.zeros((1, 4, 3)), units)


def test_split_slots_copy_scales_incoming_by_gradient_power_and_zero_resets_split_units():
    s_in, s_b, s_out = RNG.random((2, 3, 4)), RNG.random((2, 4)), RNG.random((2, 4, 5))
    source = np.array([[0, 1, 2, 3, 1], [0, 1, 2, 3, 3]])  # member 0 splits unit 1, member 1 unit 3
    new_in, new_b, new_out = split_slots(s_in, s_b, s_out, source, power=2, mode="copy")
    np.testing.assert_allclose(new_in[0, :, [1, 4]], [s_in[0, :, 1] / 4] * 2)
    np.testing.assert_allclose(new_b[1, [3, 4]], [s_b[1, 3] / 4] * 2)
    np.testing.assert_allclose(new_in[0, :, [0, 2, 3]], s_in[0, :, [0, 2, 3]])
    np.testing.assert_allclose(new_out[1, [3, 4]], [s_out[1, 3]] * 2)  # outgoing gradients are unchanged
    zero_in, zero_b, zero_out = split_slots(s_in, s_b, s_out, source, power=1, mode="zero")
    assert not zero_in[0, :, [1, 4]].any() and not zero_out[1, [3, 4]].any() and not zero_b[0, [1, 4]].any()
    np.testing.assert_allclose(zero_out[0, [0, 2, 3]], s_out[0, [0, 2, 3]])


# ------------------------------------------------------------------------------------------------ model surgery


@pytest.mark.parametrize(
    "hidden, activation, members",
    [((3,), "relu", 1), ((4, 5), "tanh", 3), ((2, 3, 4), "gelu", 5), ((6, 6), "sigmoid", 2)],
)
@pytest.mark.parametrize("strategy", ["all", "targeted"])
def test_split_preserves_outputs(hidden, activation, members, strategy):
    model = FusedMLP(members, 7, hidden, task="multiclass", num_classes=4, activation=activation, seed=3)
    x = RNG.normal(size=(40, 7)).astype("float32")
    before = outputs(model, x)
    splits = {
        layer: "all" if strategy == "all" else random_units(members, width, max(1, width // 2), seed=layer)
        for layer, width in enumerate(hidden)
    }
    grown, _ = grow_model(model, keras.optimizers.Adam(), splits, rng=0, noise=0.05)
    assert grown.hidden_units == [w * 2 if strategy == "all" else w + max(1, w // 2) for w in hidden]
    assert np.abs(outputs(grown, x) - before).max() <= 1e-5


def test_bias_nudge_changes_outputs_only_slightly():
    model = FusedMLP(2, 5, (4,), task="binary", activation="tanh", seed=0)
    x = RNG.normal(size=(30, 5)).astype("float32")
    grown, _ = grow_model(model, keras.optimizers.Adam(), {0: "all"}, rng=0, bias_nudge=0.001)
    change = np.abs(outputs(grown, x) - outputs(model, x)).max()
    assert 0 < change < 0.01


def test_grow_model_carries_adam_state_and_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.5)
    model, optimizer, history, (x, y) = trained_model(optimizer=keras.optimizers.Adam(schedule))
    units = top_units(history.history["unit_gradients"][-1][1], 2)
    grown, new_opt = grow_model(model, optimizer, {1: units}, rng=0)
    assert int(new_opt.iterations) == int(optimizer.iterations) == 24
    assert new_opt._learning_rate is schedule and new_opt.get_config() == optimizer.get_config()
    for variable in grown.trainable_variables:
        index = new_opt._get_variable_index(variable)
        assert new_opt._momentums[index].shape == variable.shape == new_opt._velocities[index].shape
    old_m = keras.ops.convert_to_numpy(
        optimizer._momentums[optimizer._get_variable_index(model.hidden_layers[1].kernel)]
    )
    new_v = keras.ops.convert_to_numpy(
        new_opt._velocities[new_opt._get_variable_index(grown.hidden_layers[1].kernel)]
    )
    old_v = keras.ops.convert_to_numpy(
        optimizer._velocities[optimizer._get_variable_index(model.hidden_layers[1].kernel)]
    )
    new_m = keras.ops.convert_to_numpy(
        new_opt._momentums[new_opt._get_variable_index(grown.hidden_layers[1].kernel)]
    )
    for n in range(model.members):
        for j, u in enumerate(units[n]):
            np.testing.assert_allclose(new_m[n, :, [u, 5 + j]], [old_m[n, :, u] / 2] * 2, rtol=1e-6)
            np.testing.assert_allclose(new_v[n, :, [u, 5 + j]], [old_v[n, :, u] / 4] * 2, rtol=1e-6)
    config = train.TrainConfig(epochs=4, batch_size=8, train_metrics=False)
    more = train.fit(grown, x, y, optimizer=new_opt, config=config, initial_epoch=2)
    assert np.isfinite(more.history["loss"]).all() and int(new_opt.iterations) == 48
    np.testing.assert_allclose(more.learning_rates[0], float(schedule(24)), rtol=1e-6)  # the schedule goes on


@pytest.mark.parametrize("slots", ["copy", "zero"])
def test_grow_model_with_sgd_momentum_trains_on(slots):
    model, optimizer, _, (x, y) = trained_model(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    grown, new_opt = grow_model(model, optimizer, {0: "all", 1: "all"}, rng=1, optimizer_slots=slots)
    assert grown.hidden_units == [8, 10] and int(new_opt.iterations) == 24
    for variable in grown.trainable_variables:
        assert new_opt.momentums[new_opt._get_variable_index(variable)].shape == variable.shape
    history = train.fit(grown, x, y, optimizer=new_opt, config=train.TrainConfig(epochs=1, batch_size=8))
    assert np.isfinite(history.history["loss"]).all()


def test_grow_model_rejects_optimizers_whose_state_it_cannot_carry():
    model = FusedMLP(2, 3, (2,), seed=0)
    with pytest.raises(
        ValueError, match="must be a keras.optimizers.Adam or SGD .*Received: optimizer=RMSprop"
    ):
        grow_model(model, keras.optimizers.RMSprop(), {0: "all"})
    with pytest.raises(ValueError, match=r"hidden layer indices in \[0, 1\)"):
        grow_model(model, keras.optimizers.Adam(), {1: "all"})
    with pytest.raises(ValueError, match="not supported with growth"):
        grow_model(model, keras.optimizers.Adam(use_ema=True), {0: "all"})


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_training_after_split_breaks_symmetry_only_with_noise(noise):
    model, optimizer, _, (x, y) = trained_model(hidden=(4,))
    grown, new_opt = grow_model(model, optimizer, {0: "all"}, rng=0, noise=noise)
    train.fit(
        grown, x, y, optimizer=new_opt, config=train.TrainConfig(epochs=1, batch_size=8, train_metrics=False)
    )
    kernel = keras.ops.convert_to_numpy(
        grown.hidden_layers[0].kernel
    )  # (N, in, 8): unit u and its copy u + 4
    gap = np.abs(kernel[:, :, :4] - kernel[:, :, 4:]).max()
    if noise:
        assert gap > 1e-4
    else:
        assert gap < 1e-6  # identical copies stay identical: the noise is what breaks the symmetry


def test_grown_model_survives_keras_round_trip(tmp_path):
    model, optimizer, _, (x, _) = trained_model()
    grown, _ = grow_model(model, optimizer, {0: "all"}, rng=0)
    grown.save(tmp_path / "grown.keras")
    loaded = keras.saving.load_model(tmp_path / "grown.keras")
    assert isinstance(loaded, FusedMLP) and loaded.hidden_units == [8, 5]
    np.testing.assert_allclose(outputs(loaded, x), outputs(grown, x), atol=1e-6)


# ------------------------------------------------------------------------------------------------ growth rounds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(monitor="accuracy"), "Argument `monitor` must be one of"),
        (dict(strategy="targeted"), "Argument `units_per_split` must be an int >= 1"),
        (dict(patience=-1), r"Argument `patience` must be an int >= 0. Received: patience=-1"),
        (dict(max_width=0), "Argument `max_width` must be an int >= 1"),
        (dict(noise=-0.1), "Argument `noise` must be >= 0"),
        (dict(layers=(0, 0)), "Argument `layers` must be None or distinct"),
        (dict(optimizer_slots="keep"), "Argument `optimizer_slots` must be one of"),
        (dict(strategy="splitting", units_per_split=0), "must be None \\(up to the width\\) or an int >= 1"),
        (dict(delta=-0.1), "Argument `delta` must be >= 0"),
        (dict(anneal_epochs=-1), "Argument `anneal_epochs` must be an int >= 0"),
        (dict(strategy="split"), "Argument `strategy` must be one of \\('all', 'targeted', 'splitting'\\)"),
    ],
)
def test_growth_config_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GrowthConfig(**kwargs)


def test_growth_config_get_config_round_trip():
    config = GrowthConfig(strategy="targeted", units_per_split=3, layers=[1, 0], min_delta=0.01, seed=4)
    assert config.layers == (1, 0)
    assert GrowthConfig(**config.get_config()) == config


def test_planned_splits_respect_max_width():
    model = FusedMLP(2, 3, (4, 6), seed=0)
    splits = planned_splits(model, GrowthConfig(max_width=7), None)
    assert {layer: units.shape for layer, units in splits.items()} == {0: (2, 3), 1: (2, 1)}
    assert planned_splits(model, GrowthConfig(max_width=6, layers=(1,)), None) == {}


@pytest.fixture(scope="module")
def digits():
    return prepare_data(DataConfig("digits"))


@pytest.mark.parametrize("strategy", ["all", "targeted"])
def test_growth_rounds_on_digits_keep_accuracy_at_splits_and_beat_two_units(digits, strategy):
    model = FusedMLP(3, digits.num_features, (2,), task="multiclass", num_classes=digits.num_classes, seed=0)
    growth = GrowthConfig(
        min_delta=0.005, patience=2, max_rounds=3, strategy=strategy, units_per_split=4, max_width=64
    )
    config = train.TrainConfig(epochs=30, batch_size=32, train_metrics=False)
    grown, optimizer, rounds = grow_rounds(model, keras.optimizers.Adam(1e-2), digits, config, growth)

    assert [r.round for r in rounds] == [0, 1, 2, 3]
    expected = [(2,), (4,), (8,), (16,)] if strategy == "all" else [(2,), (4,), (8,), (12,)]
    assert [r.widths for r in rounds] == expected and tuple(grown.hidden_units) == expected[-1]
    for r in rounds[:-1]:
        assert abs(r.val_after_split - r.val_before_split) <= 0.005  # the split keeps the function
        assert r.epochs_trained >= 1 and r.split_seconds > 0
    assert rounds[-1].val_after_split is None and rounds[-1].new_widths is None
    assert rounds[-1].val_before_split > rounds[0].val_before_split + 0.1  # grown beats the 2-unit model
    last = rounds[-1]
    assert last.params == grown.count_params()
    assert last.flops_per_sample == ensemble_flops(64, last.widths, 10, 3)
    assert int(optimizer.iterations) == sum(r.epochs_trained for r in rounds) * (len(digits.x_train) // 32)
    row = rounds[0].as_dict()
    assert (
        row["widths"] == "2"
        and row["new_widths"] == "4"
        and set(row) == {f.name for f in dataclasses.fields(GrowthRound)}
    )


# With SGDR: 96 rows at batch 8 = 12 steps per epoch, cycles of 3 epochs.
SGDR_STEPS_PER_EPOCH, SGDR_CYCLE_EPOCHS = 12, 3


def sgdr_growth(epochs: int, **growth):
    x, y = toy_data()
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:48], y_val=y[:48])
    schedule = SGDRSchedule.from_epochs(SGDR_CYCLE_EPOCHS, SGDR_STEPS_PER_EPOCH, lr_init=0.05, lr_min=1e-3)
    model = FusedMLP(2, x.shape[1], (4,), task="multiclass", num_classes=3, seed=0)
    config = train.TrainConfig(epochs=epochs, batch_size=8, train_metrics=False)
    growth = GrowthConfig(max_rounds=2, **growth)
    return schedule, grow_rounds(model, keras.optimizers.Adam(schedule), data, config, growth)


@pytest.mark.parametrize(
    "epochs, growth, round_epochs, plateau",
    [
        (10, dict(min_delta=1.0, patience=1), 3, True),  # nothing improves: the 1st cycle end ends the round
        (10, dict(min_delta=1.0, patience=2), 6, True),  # patience counts cycles, not epochs
        (4, dict(patience=100), 6, False),  # the 4-epoch cap runs on to the end of the second cycle
    ],
)
def test_growth_rounds_with_sgdr_end_every_round_at_a_cycle_end(epochs, growth, round_epochs, plateau):
    schedule, (grown, optimizer, rounds) = sgdr_growth(epochs, **growth)

    assert [r.epochs_trained for r in rounds] == [round_epochs] * 3
    assert [r.plateau for r in rounds] == [plateau] * 3
    round_ends = np.cumsum([r.epochs_trained for r in rounds]) * SGDR_STEPS_PER_EPOCH
    assert set(round_ends) <= set(schedule.cycle_ends(int(optimizer.iterations)))
    assert int(optimizer.iterations) == round_ends[-1]
    for previous, r in zip(rounds, rounds[1:], strict=False):  # a round starts where the split left the model
        assert r.val_start == previous.val_after_split
    # Widths 4 -> 8 -> 16: the learning rate is scaled by 4/16, on the same schedule (same cycle ends).
    step = int(optimizer.iterations)
    np.testing.assert_allclose(float(optimizer.learning_rate), float(schedule(step)) * 4 / 16, rtol=1e-6)


def test_round_stop_epoch_rejects_cycles_that_end_inside_an_epoch():
    optimizer = keras.optimizers.Adam(SGDRSchedule(cycle_length=18))  # 1.5 epochs of 12 steps
    assert round_stop_epoch(keras.optimizers.Adam(1e-3), 5, 4, 12) == 9  # no cycles: the cap itself
    with pytest.raises(ValueError, match="cycle that ends at step 18 ends 6 steps into an epoch of 12 steps"):
        round_stop_epoch(optimizer, 0, 1, 12)


@pytest.mark.parametrize(
    "start, end, mode, expected",
    [
        (0.9, 0.9, "max", True),
        (0.9, 0.89, "max", False),
        (0.3, 0.31, "min", False),
        (0.3, 0.2, "min", True),
        (0.3, float("nan"), "min", False),  # a diverged loss is not "not worse"
    ],
)
def test_grown_is_not_worse_compares_the_grown_end_with_the_start_of_growth(start, end, mode, expected):
    def row(val_start, val_before_split):
        return GrowthRound(0, (4,), 0, 0, 1, 0, True, val_start, val_before_split, None, None, 0.0, 0.0)

    rounds = [row(start, 0.5), row(0.5, end)]  # the rounds in between do not matter
    assert grown_is_not_worse(rounds, mode) is expected


def test_scale_learning_rate_scales_a_schedule_keeps_its_cycle_ends_and_survives_serialisation():
    schedule = SGDRSchedule(cycle_length=10, lr_init=0.1, lr_min=0.01)
    optimizer = keras.optimizers.Adam(schedule)
    scale_learning_rate(optimizer, 0.5)
    scale_learning_rate(optimizer, 0.5)  # folded into one ScaledSchedule of the original schedule
    scaled = optimizer._learning_rate
    assert isinstance(scaled, ScaledSchedule) and scaled.schedule is schedule and scaled.scale == 0.25
    steps = np.arange(0, 35)
    np.testing.assert_allclose(scaled(steps).numpy(), 0.25 * schedule(steps).numpy(), rtol=1e-6)
    assert train.schedule_cycle_ends(optimizer, 35) == [10, 20, 30]
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))._learning_rate
    np.testing.assert_allclose(restored(steps).numpy(), scaled(steps).numpy(), rtol=1e-6)

    decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert not hasattr(ScaledSchedule(decay, 0.5), "cycle_ends")  # not taken for a cyclic schedule
    constant = keras.optimizers.SGD(0.1)
    scale_learning_rate(constant, 0.25)
    assert float(constant.learning_rate) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="Argument `factor` must be > 0. Received: factor=0"):
        scale_learning_rate(constant, 0)


# ------------------------------------------------------------------------------------------------ when to grow, how to split


def toy_split_data(rows: int = 96):
    x, y = toy_data(rows)
    return types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:48], y_val=y[:48])


class StepRates(keras.callbacks.Callback):
    """The learning rate of every optimiser step and the width it trained, across rounds."""

    def __init__(self):
        super().__init__()
        self.rates, self.widths = [], []

    def on_steps_end(self, logs: dict) -> None:
        self.rates += logs["learning_rates"]
        self.widths += [self.model.hidden_units[0]] * len(logs["learning_rates"])


def test_anneal_epochs_end_every_round_at_the_lowest_rate_and_restart_the_next_at_the_full_rate():
    data, rates = toy_split_data(), StepRates()
    model = FusedMLP(2, 6, (2,), task="multiclass", num_classes=3, seed=0)
    growth = GrowthConfig(max_rounds=2, patience=1, min_delta=1.0, anneal_epochs=3, lr_width_scaling=False)
    config = train.TrainConfig(epochs=5, batch_size=8, train_metrics=False)  # 12 steps per epoch
    _, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth, callbacks=[rates])

    # 2 epochs to the plateau (the first is the first best, the second does not beat it by 1.0), 3 annealing
    assert [r.epochs_trained for r in rounds] == [2 + 3] * 3
    per_epoch = np.asarray(rates.rates).reshape(-1, 12)[:, 0]  # the rate is set per epoch
    fractions = [1.0, 1.0] + [
        ANNEAL_TO + (1 - ANNEAL_TO) * (1 + np.cos(np.pi * e / 3)) / 2 for e in (1, 2, 3)
    ]
    np.testing.assert_allclose(per_epoch, 0.01 * np.tile(fractions, 3), rtol=1e-5)
    assert np.asarray(rates.widths).reshape(-1, 12)[:, 0].tolist() == [2] * 5 + [4] * 5 + [8] * 5


@pytest.mark.parametrize("start_value, epochs", [(None, 3), (0.9, 2)])
def test_round_end_compares_with_the_start_value_or_else_with_the_first_epoch(start_value, epochs):
    """With `anneal_epochs`, rounds pass None: the start value was measured at the annealed rate, which the round's
    full-rate epochs do not reach at once, so the round's first epoch is its first best (Keras' EarlyStopping)."""
    end = RoundEnd("val_accuracy", "max", min_delta=0.01, patience=2, start_value=start_value)
    end.set_model(FusedMLP(1, 2, (2,), task="multiclass", num_classes=3, seed=0))
    end.model.stop_training = False  # as `fit` sets it
    end.set_params({})
    end.on_train_begin()
    for epoch, value in enumerate([0.5, 0.505, 0.508, 0.7]):  # 0.505 and 0.508 do not beat 0.5 by 0.01
        end.on_epoch_end(epoch, {"val_accuracy": value})
        if end.model.stop_training:
            break
    assert end.plateau and epoch + 1 == epochs


def test_anneal_epochs_are_rejected_with_a_cyclic_schedule():
    with pytest.raises(
        ValueError, match="Argument `anneal_epochs` must be 0 with a cyclic learning-rate schedule"
    ):
        sgdr_growth(3, anneal_epochs=2)


def test_growth_stops_after_a_round_without_validation_gain():
    data = toy_split_data()
    model = FusedMLP(2, 6, (2,), task="multiclass", num_classes=3, seed=0)
    growth = GrowthConfig(max_rounds=4, patience=1, min_delta=1.0, stop_without_gain=True)  # no gain is > 1.0
    config = train.TrainConfig(epochs=2, batch_size=8, train_metrics=False)
    grown, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth)

    # Round 0 is not judged (it starts from the untrained model); round 1 gains nothing: growth stops there.
    assert [r.widths for r in rounds] == [(2,), (4,)] and grown.hidden_units == [4]
    assert [r.stop_reason for r in rounds] == ["", "no_gain"] and rounds[-1].new_widths is None
    _, _, capped = grow_rounds(
        FusedMLP(2, 6, (2,), task="multiclass", num_classes=3, seed=0),
        keras.optimizers.Adam(0.01),
        data,
        config,
        GrowthConfig(max_rounds=4, patience=1, max_width=4),
    )
    assert [r.widths for r in capped] == [(2,), (4,)] and capped[-1].stop_reason == "max_width"


def test_splitting_strategy_splits_the_units_with_the_most_negative_index_and_records_them():
    data = toy_split_data()
    model = FusedMLP(3, 6, (5,), task="multiclass", num_classes=3, activation="tanh", seed=2)
    growth = GrowthConfig(
        max_rounds=1, patience=1, strategy="splitting", units_per_split=2, noise=0.0, delta=1e-3
    )
    config = train.TrainConfig(epochs=2, batch_size=8, train_metrics=False)
    trained = []  # the model as the first round ends, to recompute the index on it
    keep = keras.callbacks.LambdaCallback(on_train_end=lambda logs: trained.append(keep.model))
    grown, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth, callbacks=[keep])

    index = splitting_index(trained[0], data.x_train, data.y_train, 0, seed=growth.seed)
    chosen = np.asarray(rounds[0].split_units[0])  # (N, k)
    np.testing.assert_array_equal(chosen, np.sort(np.argsort(index.eigenvalues, axis=1)[:, :2], axis=1))
    np.testing.assert_allclose(rounds[0].split_index[0], np.take_along_axis(index.eigenvalues, chosen, 1))
    assert grown.hidden_units == [7] and rounds[0].new_widths == (7,)
    assert (
        abs(rounds[0].val_after_split - rounds[0].val_before_split) <= 1e-6
    )  # delta 1e-3 keeps the function
    rows = split_rows(rounds)
    assert len(rows) == 3 * 2 and rows[0] == dict(
        round=0, layer=0, member=0, unit=int(chosen[0, 0]), splitting_index=rounds[0].split_index[0][0][0]
    )
    assert rounds[0].as_dict()["split_units"].startswith('{"0": [[')


def test_splitting_strategy_stops_when_no_unit_has_a_negative_index():
    """Linear units have sigma'' = 0: no split lowers the loss, so splitting growth stops at once."""
    data = toy_split_data()
    model = FusedMLP(2, 6, (3,), task="multiclass", num_classes=3, activation="linear", seed=0)
    growth = GrowthConfig(max_rounds=3, patience=1, strategy="splitting")
    config = train.TrainConfig(epochs=1, batch_size=8, train_metrics=False)
    grown, _, rounds = grow_rounds(model, keras.optimizers.Adam(0.01), data, config, growth)
    assert len(rounds) == 1 and rounds[0].stop_reason == "splitting_stable" and grown.hidden_units == [3]
