import re
from pathlib import Path

import keras
import numpy as np
import pytest

from ensemble.growth.split import grow_model
from ensemble.model.fused import FusedMLP
from ensemble.optim.optimizer_state import get_slot, learning_rate_schedule, slot_powers, slot_variables
from ensemble.optim.schedules import SGDRSchedule

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "ensemble" / "optim" / "optimizer_state.py"
# Keras' private optimiser state: the slot lists, their index, the schedule attribute.
PRIVATE = re.compile(r"_get_variable_index|_momentums|_velocities|_velocity_hats|\b_learning_rate\b")


def private_state_uses(path: Path) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]


def test_only_the_adapter_touches_keras_private_optimizer_state():
    assert private_state_uses(ADAPTER), "the pattern must find the adapter's own uses"
    sources = [
        p for folder in ("ensemble", "tasks", "flows", "benchmarks") for p in (ROOT / folder).rglob("*.py")
    ]
    offenders = [use for path in sources if path != ADAPTER for use in private_state_uses(path)]
    assert offenders == [], "go through ensemble.optim.optimizer_state instead:\n" + "\n".join(offenders)


def built(optimizer, variable):
    optimizer.build([variable])
    return optimizer


def test_adam_slots_are_the_moments_keras_adam_updates():
    variable = keras.Variable(np.zeros((2, 3), "float32"))
    optimizer = built(keras.optimizers.Adam(0.1, beta_1=0.9, beta_2=0.99), variable)
    grad = np.arange(6, dtype="float32").reshape(2, 3)
    optimizer.apply([grad], [variable])
    np.testing.assert_allclose(get_slot(optimizer, "momentums", variable).numpy(), 0.1 * grad, rtol=1e-6)
    np.testing.assert_allclose(get_slot(optimizer, "velocities", variable).numpy(), 0.01 * grad**2, rtol=1e-5)
    assert slot_powers(optimizer) == {"momentums": 1, "velocities": 2}
    assert len(slot_variables(optimizer)) == 2


def test_amsgrad_adds_the_velocity_hats_slot():
    variable = keras.Variable(np.zeros((4,), "float32"))
    optimizer = built(keras.optimizers.Adam(amsgrad=True), variable)
    assert slot_powers(optimizer) == {"momentums": 1, "velocities": 2, "velocity_hats": 2}
    assert get_slot(optimizer, "velocity_hats", variable).shape == variable.shape


def test_sgd_momentum_slot_is_the_buffer_keras_sgd_updates():
    variable = keras.Variable(np.zeros((3,), "float32"))
    optimizer = built(keras.optimizers.SGD(0.5, momentum=0.9), variable)
    optimizer.apply([np.ones(3, "float32")], [variable])
    np.testing.assert_allclose(get_slot(optimizer, "momentums", variable).numpy(), -0.5 * np.ones(3))
    assert slot_powers(optimizer) == {"momentums": 1}


def test_plain_sgd_has_no_slot_and_grows_without_one():
    model = FusedMLP(2, 3, (4,), task="binary")
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    assert slot_powers(optimizer) == {} and slot_variables(optimizer) == []
    grown, new_optimizer = grow_model(model, optimizer, {0: "all"})  # an IndexError before
    assert grown.hidden_units == [8] and int(new_optimizer.iterations) == 0


def test_unknown_optimizer_or_slot_name_is_rejected_with_the_known_ones():
    variable = keras.Variable(np.zeros((3,), "float32"))
    with pytest.raises(ValueError, match="Adam or SGD"):
        slot_powers(built(keras.optimizers.RMSprop(), variable))
    with pytest.raises(ValueError, match=r"\['momentums', 'velocities', 'velocity_hats'\]"):
        get_slot(built(keras.optimizers.Adam(), variable), "moment", variable)


def test_learning_rate_schedule_is_the_object_passed_in_or_none_for_a_constant():
    schedule = SGDRSchedule(cycle_length=20, lr_init=0.1)
    assert learning_rate_schedule(keras.optimizers.Adam(schedule)) is schedule
    assert learning_rate_schedule(keras.optimizers.Adam(0.01)) is None
