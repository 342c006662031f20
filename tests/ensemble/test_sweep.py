"""Per-member hyper-parameters: each swept member against a separate Keras run with its own settings, and the
expansion of a grid or random space to members."""

import keras
import numpy as np
import pytest

from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.training.sweep import SweepConfig, member_settings
from ensemble.training.train import TrainConfig, epoch_indices, fit
from tests.ensemble.test_train import (
    FEATURES,
    HIDDEN,
    REFERENCE_LOSSES,
    make_data,
    max_relative_weight_difference,
    max_weight_difference,
)

MEMBERS = 4
LR_SCALES = (1.0, 0.3, 2.0, 0.5)
WEIGHT_DECAY = (0.0, 1e-3, 0.0, 1e-2)
INIT_SCALES = (1.0, 0.5, 1.5, 1.0)
BAGGING = (False, True, False, True)


def reference_run(model: FusedMLP, n: int, x, y, make_optimizer, config: TrainConfig) -> list[np.ndarray]:
    """Member n trained alone by Keras `fit`: its own learning rate (`make_optimizer(scale)`), an `L2(decay)`
    kernel regulariser on every layer, its own (scaled) initial weights and its own rows (bagging or not)."""
    decay = config.per_member("weight_decay", model.members)[n]
    regularizer = keras.regularizers.L2(float(decay)) if decay else None
    layers = [keras.Input(shape=(model.input_dim,))]
    layers += [
        keras.layers.Dense(units, activation=model.activation, kernel_regularizer=regularizer)
        for units in model.hidden_units
    ]
    layers.append(keras.layers.Dense(model.output_dim, kernel_regularizer=regularizer))
    reference = keras.Sequential(layers)
    reference.set_weights(model.member_weights(n))
    reference.compile(
        optimizer=make_optimizer(config.per_member("lr_scales", model.members)[n]),
        loss=REFERENCE_LOSSES[model.task](),
    )
    rows = np.concatenate(
        [
            epoch_indices(len(x), model.members, config.batch_size, e, config.seed, config.bagging)[:, n, :]
            for e in range(config.epochs)
        ]
    ).reshape(-1)
    targets = y[rows].astype("int64" if model.task == "multiclass" else "float32")
    targets = targets if model.task == "multiclass" else targets[:, None]
    reference.fit(x[rows], targets, batch_size=config.batch_size, shuffle=False, epochs=1, verbose=0)
    return reference.get_weights()


def sgdr(steps_per_epoch: int):
    return lambda scale: keras.optimizers.Adam(
        SGDRSchedule.from_epochs(1, steps_per_epoch, lr_init=0.02 * scale, lr_min=1e-4 * scale)
    )


@pytest.mark.parametrize(
    "task, make_optimizer, base_optimizer",
    [
        ("multiclass", lambda s: keras.optimizers.Adam(0.01 * s), lambda: keras.optimizers.Adam(0.01)),
        (
            "binary",
            lambda s: keras.optimizers.SGD(0.02 * s, momentum=0.9),
            lambda: keras.optimizers.SGD(0.02, momentum=0.9),
        ),
        ("regression", lambda s: keras.optimizers.SGD(0.01 * s), lambda: keras.optimizers.SGD(0.01)),
        ("multiclass", sgdr(120), lambda: sgdr(120)(1.0)),
    ],
    ids=["adam", "momentum", "sgd", "adam-sgdr-scaled-lr_init-and-lr_min"],
)
def test_each_swept_member_equals_a_separate_keras_run_with_its_own_settings(
    task, make_optimizer, base_optimizer
):
    x, y = make_data(120, task)
    model = FusedMLP(MEMBERS, FEATURES, HIDDEN, task=task, num_classes=3, activation="tanh", seed=5)
    model.scale_kernels(INIT_SCALES)
    config = TrainConfig(
        epochs=2,
        batch_size=1,
        bagging=BAGGING,
        seed=2,
        steps_per_call=50,
        lr_scales=LR_SCALES,
        weight_decay=WEIGHT_DECAY,
        train_metrics=False,
    )
    references = [reference_run(model, n, x, y, make_optimizer, config) for n in range(MEMBERS)]

    fit(model, x, y, optimizer=base_optimizer(), config=config)

    for n in range(
        MEMBERS
    ):  # member 2 (learning rate x2, momentum) grows weights of magnitude ~4 in 240 steps
        assert max_relative_weight_difference(model.member_weights(n), references[n]) < 1e-4, f"member {n}"


def test_a_members_own_learning_rate_changes_only_that_member():
    x, y = make_data(60, "multiclass")
    runs = []
    for scales in [(1.0, 1.0, 1.0), (1.0, 3.0, 1.0)]:
        model = FusedMLP(3, FEATURES, HIDDEN, task="multiclass", num_classes=3, activation="tanh", seed=1)
        fit(
            model, x, y, optimizer=keras.optimizers.Adam(0.01), config=TrainConfig(epochs=1, lr_scales=scales)
        )
        runs.append([model.member_weights(n) for n in range(3)])
    assert max_weight_difference(runs[0][0], runs[1][0]) == 0
    assert max_weight_difference(runs[0][2], runs[1][2]) == 0
    assert max_weight_difference(runs[0][1], runs[1][1]) > 1e-2


def test_shard_uses_the_entries_of_its_own_members():
    config = TrainConfig(member_offset=2, lr_scales=(1, 2, 3, 4, 5), weight_decay=0.1)
    assert config.per_member("lr_scales", 3).tolist() == [3, 4, 5]
    assert config.per_member("weight_decay", 3).tolist() == [0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="one per member of the whole ensemble"):
        config.per_member("lr_scales", 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_scales": (1.0, -0.5)}, "lr_scales"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"weight_decay": (0.0, float("nan"))}, "weight_decay"),
    ],
)
def test_train_config_rejects_negative_learning_rate_scales_and_decays(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_per_member_learning_rates_reject_an_optimizer_without_an_exact_fused_formula():
    x, y = make_data(20, "binary")
    model = FusedMLP(2, FEATURES, HIDDEN, task="binary", seed=0)
    with pytest.raises(ValueError, match="Per-member learning rates"):
        fit(
            model,
            x,
            y,
            optimizer=keras.optimizers.RMSprop(0.01),
            config=TrainConfig(epochs=1, lr_scales=(1, 2)),
        )


def test_scale_kernels_multiplies_each_members_initial_kernels_by_its_own_factor():
    plain = FusedMLP(3, FEATURES, HIDDEN, task="binary", seed=4)
    scaled = FusedMLP(3, FEATURES, HIDDEN, task="binary", seed=4)
    scaled.scale_kernels([1.0, 0.5, 2.0])
    for n, factor in enumerate([1.0, 0.5, 2.0]):
        for i, (a, b) in enumerate(zip(plain.member_weights(n), scaled.member_weights(n), strict=True)):
            np.testing.assert_allclose(
                b, a * (factor if i % 2 == 0 else 1.0), rtol=1e-6
            )  # kernels, not biases
    with pytest.raises(ValueError, match="one positive factor per member"):
        scaled.scale_kernels([1.0, 0.0, 1.0])


# --- the space and its members --------------------------------------------------------------------------------


def test_grid_expands_to_every_combination_times_repeats_configuration_major():
    sweep = SweepConfig({"learning_rate": [0.001, 0.01], "weight_decay": [0.0, 1e-4, 1e-3]}, repeats=2)
    members = sweep.expand(base_learning_rate=0.01)
    assert sweep.members == len(members) == 12
    assert [m["configuration"] for m in members[:4]] == [0, 0, 1, 1]
    assert [m["repeat"] for m in members[:4]] == [0, 1, 0, 1]
    combos = {(m["learning_rate"], m["weight_decay"]) for m in members}
    assert combos == {(lr, wd) for lr in (0.001, 0.01) for wd in (0.0, 1e-4, 1e-3)}
    assert members[0]["lr_scale"] == pytest.approx(0.1) and members[0]["init_scale"] == 1.0
    settings = member_settings(members)
    assert len(settings["lr_scales"]) == 12 and settings["bagging"] == (False,) * 12


def test_random_space_draws_reproducibly_from_choices_and_log_ranges():
    space = {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "bagging": [True, False]}
    sweep = SweepConfig(space, kind="random", samples=50, seed=3)
    first, again = (
        sweep.configurations(),
        SweepConfig(space, kind="random", samples=50, seed=3).configurations(),
    )
    assert first == again and len(first) == 50
    rates = np.array([c["learning_rate"] for c in first])
    assert rates.min() >= 1e-4 and rates.max() <= 1e-1
    assert (rates < 1e-3).any() and (rates > 1e-2).any()  # log-uniform reaches both decades
    assert {c["bagging"] for c in first} == {True, False}


@pytest.mark.parametrize(
    "space, kind, match",
    [
        ({}, "grid", "space is empty"),
        ({"learning_rate": []}, "grid", "learning_rate is empty"),
        ({"learning_rate": [0.01, -0.1]}, "grid", "must be > 0"),
        ({"weight_decay": [-1e-4]}, "grid", "must be >= 0"),
        ({"global_clipnorm": [1.0]}, "grid", "couple the members"),
        ({"momentum": [0.9]}, "grid", "not a sweepable parameter"),
        ({"learning_rate": {"low": 1e-3, "high": 1e-2}}, "grid", "needs kind 'random'"),
        ({"learning_rate": {"low": 1e-2, "high": 1e-3}}, "random", "low <= high"),
        ({"bagging": ["yes"]}, "grid", "true or false"),
    ],
)
def test_sweep_config_rejects_bad_spaces_with_a_message_that_says_what_to_give(space, kind, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(space, kind=kind)


def test_shards_of_a_sweep_train_their_members_as_one_run_does():
    x, y = make_data(40, "binary")
    settings = {"lr_scales": LR_SCALES, "weight_decay": WEIGHT_DECAY, "bagging": BAGGING}
    whole = FusedMLP(MEMBERS, FEATURES, HIDDEN, task="binary", activation="tanh", seed=3)
    fit(whole, x, y, optimizer=keras.optimizers.Adam(0.01), config=TrainConfig(epochs=1, **settings))
    for offset, count in [(0, 2), (2, 2)]:
        seeds = whole.member_seeds[offset : offset + count]
        shard = FusedMLP(count, FEATURES, HIDDEN, task="binary", activation="tanh", member_seeds=seeds)
        config = TrainConfig(epochs=1, member_offset=offset, **settings)
        fit(shard, x, y, optimizer=keras.optimizers.Adam(0.01), config=config)
        for n in range(count):
            assert max_weight_difference(shard.member_weights(n), whole.member_weights(offset + n)) < 1e-6


def test_sweep_config_get_config_round_trip():
    sweep = SweepConfig({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}, "random", 5, 2, 7)
    assert SweepConfig(**sweep.get_config()) == sweep
    assert SweepConfig(**sweep.get_config()).configurations() == sweep.configurations()
