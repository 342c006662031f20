import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ensemble.optim.schedules import SGDRSchedule

CASES = [  # cycle_length (steps), cycle_length_multiplier, lr_init, lr_min, lr_multiplier
    (10, 1.0, 0.1, 0.001, 1.0),
    (4, 1.0, 0.1, 0.01, 0.8),
    (7, 1.5, 0.1, 0.01, 0.9),
    (2.5, 2.0, 0.05, 0.0, 0.5),
]


def reference_lrs(total_steps, cycle_length, multiplier, lr_init, lr_min, lr_multiplier):
    """Plain Python loop, seed 002 style: restart when the cycle is used up, then scale max and min."""
    lrs, ends = [], []
    start, k, lr_max, lr_low = 0, 0, lr_init, lr_min
    length = math.ceil(round(cycle_length, 9))
    for step in range(total_steps):
        if step - start >= length:
            ends.append(step)
            start, k = step, k + 1
            length = math.ceil(round(cycle_length * multiplier**k, 9))
            lr_max, lr_low = lr_max * lr_multiplier, lr_low * lr_multiplier
        lrs.append(lr_low + 0.5 * (lr_max - lr_low) * (1 + math.cos(math.pi * (step - start) / length)))
    if total_steps - start == length:
        ends.append(total_steps)
    return np.array(lrs), ends


@pytest.mark.parametrize("args", CASES)
def test_learning_rate_equals_python_loop_reference_at_every_step(args):
    schedule = SGDRSchedule(*args)
    expected, expected_ends = reference_lrs(400, *args)
    np.testing.assert_allclose(schedule(tf.range(400)).numpy(), expected, rtol=1e-6, atol=1e-9)
    assert schedule.cycle_ends(400) == expected_ends


@pytest.mark.parametrize("args", CASES)
def test_cycle_starts_at_lr_init_times_multiplier_power_and_ends_near_lr_min(args):
    schedule = SGDRSchedule(*args)
    _, _, lr_init, lr_min, lr_multiplier = args
    starts = schedule.cycle_starts(400)
    for k, start in enumerate(starts):
        assert float(schedule(start)) == pytest.approx(lr_init * lr_multiplier**k, rel=1e-6)
    for k, end in enumerate(schedule.cycle_ends(400)):
        last = float(schedule(end - 1))  # the last step of cycle k
        length = schedule.cycle_length_at(k)
        bound = lr_multiplier**k * (lr_min + (lr_init - lr_min) * (1 - math.cos(math.pi / length)) / 2)
        assert lr_min * lr_multiplier**k <= last <= bound * (1 + 1e-6)


def test_cycle_ends_are_where_the_learning_rate_restarts():
    schedule = SGDRSchedule(5, 1.5, 0.1, 0.001, 0.9)
    lrs = schedule(tf.range(300)).numpy()
    restarts = [s for s in range(1, 300) if lrs[s] > lrs[s - 1]]
    assert schedule.cycle_ends(299) == restarts
    assert schedule.cycle_starts(300) == [0, *restarts]


@pytest.mark.parametrize(("lr_min", "lr_multiplier"), [(0.0, 0.7), (0.01, 1.0)])
def test_equals_keras_cosine_decay_restarts_where_the_formulas_coincide(lr_min, lr_multiplier):
    ours = SGDRSchedule(4, 2.0, 0.1, lr_min, lr_multiplier)
    keras_sgdr = keras.optimizers.schedules.CosineDecayRestarts(
        0.1, 4, t_mul=2.0, m_mul=lr_multiplier, alpha=lr_min / 0.1
    )
    steps = tf.range(120)
    np.testing.assert_allclose(ours(steps).numpy(), keras_sgdr(steps).numpy(), rtol=1e-5)


def test_lr_min_shrinks_with_lr_multiplier_unlike_cosine_decay_restarts():
    schedule = SGDRSchedule(10, 1.0, 0.1, 0.05, 0.5)
    keras_sgdr = keras.optimizers.schedules.CosineDecayRestarts(0.1, 10, t_mul=1.0, m_mul=0.5, alpha=0.5)
    assert float(schedule(19)) == pytest.approx(0.5 * (0.05 + 0.05 * (1 - math.cos(math.pi / 10)) / 2))
    assert float(keras_sgdr(19)) > 0.05  # Keras keeps the floor at alpha * initial_learning_rate


def test_from_epochs_gives_cycle_length_in_steps():
    schedule = SGDRSchedule.from_epochs(2.5, steps_per_epoch=4, lr_init=0.1, cycle_length_multiplier=2.0)
    assert schedule.cycle_length == 10
    assert schedule.cycle_ends(100) == [10, 30, 70]
    assert schedule.steps_for_cycles(3) == 70


def test_schedule_is_graph_safe_with_the_optimizer_iteration_variable():
    schedule = SGDRSchedule(6, 1.5, 0.1, 0.001, 0.9)
    iterations = tf.Variable(0, dtype="int64")
    read = tf.function(lambda: schedule(iterations))
    values = []
    for _ in range(40):
        values.append(float(read()))
        iterations.assign_add(1)
    np.testing.assert_allclose(values, schedule(tf.range(40)).numpy(), rtol=1e-7)


def test_optimizer_uses_the_schedule_at_its_iteration_count():
    schedule = SGDRSchedule(3, 1.0, 0.1, 0.0, 0.5)
    optimizer = keras.optimizers.SGD(schedule)
    optimizer.iterations.assign(4)
    assert float(optimizer.learning_rate) == pytest.approx(float(schedule(4)))
    assert float(optimizer.learning_rate) == pytest.approx(0.05 * (1 + math.cos(math.pi / 3)) / 2)


def test_check_whole_cycles_rejects_a_run_that_ends_inside_a_cycle():
    schedule = SGDRSchedule.from_epochs(10, 4, cycle_length_multiplier=1.5)  # ends 40, 100, 190 steps
    assert schedule.check_whole_cycles(100) == 2
    with pytest.raises(ValueError, match=r"ends inside SGDR cycle 2.*100 steps = 25 epochs or 190 steps"):
        schedule.check_whole_cycles(120, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"cycle 0.*40 steps"):
        schedule.check_whole_cycles(30)


def test_get_config_round_trips_through_keras_serialization():
    schedule = SGDRSchedule(7, 1.5, 0.1, 0.01, 0.9, name="sgdr")
    again = SGDRSchedule.from_config(schedule.get_config())
    assert again.get_config() == schedule.get_config()
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, SGDRSchedule)
    np.testing.assert_array_equal(restored(tf.range(100)).numpy(), schedule(tf.range(100)).numpy())
    optimizer = keras.optimizers.SGD.from_config(keras.optimizers.SGD(schedule, momentum=0.9).get_config())
    assert isinstance(optimizer._learning_rate, SGDRSchedule)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cycle_length": 0}, "cycle_length"),
        ({"cycle_length_multiplier": 0.5}, "cycle_length_multiplier"),
        ({"lr_init": 0.0}, "lr_init"),
        ({"lr_min": 0.2}, "lr_min"),
        ({"lr_multiplier": -1.0}, "lr_multiplier"),
        ({"lr_init": float("nan")}, "lr_init"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_argument_name(kwargs, match):
    with pytest.raises(ValueError, match=f"Argument `{match}` must be"):
        SGDRSchedule(**{"cycle_length": 5, "lr_init": 0.1, **kwargs})
