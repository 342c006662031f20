"""The one module that reads or writes a Keras optimiser's private state: its per-variable slots and its schedule.

Keras 3 keeps an optimiser's per-variable slots in lists indexed by the private `_get_variable_index(variable)`:
Adam's `_momentums`, `_velocities` (and `_velocity_hats` with `amsgrad`), SGD's public `momentums`. The
learning-rate schedule itself sits in the private `_learning_rate` (the public `learning_rate` evaluates it at the
current step). The fused update kernels (`ensemble.optim.optimizers`), growth (`ensemble.growth.split`: slots carried through a
split, the schedule kept and scaled) and the training loop (the schedule's cycle ends) all go through the
functions below, so a Keras release that renames these attributes is a change here only
(`tests/ensemble/test_optimizer_state.py` fails when another module touches them).

Slots are named as Keras names them without the underscore: `"momentums"`, `"velocities"`, `"velocity_hats"`.
"""

from __future__ import annotations

import keras

# Per optimiser class: {slot name: (attribute holding the per-variable list, power of the gradient it scales
# with)}.
# Adam's first moment ~ g, its second moments ~ g^2; SGD's momentum buffer ~ lr * g.
SLOTS: tuple[tuple[type, dict[str, tuple[str, int]]], ...] = (
    (
        keras.optimizers.Adam,
        {
            "momentums": ("_momentums", 1),
            "velocities": ("_velocities", 2),
            "velocity_hats": ("_velocity_hats", 2),
        },
    ),
    (keras.optimizers.SGD, {"momentums": ("momentums", 1)}),
)


def _slot_attributes(optimizer: keras.optimizers.Optimizer) -> dict[str, tuple[str, int]]:
    for cls, slots in SLOTS:
        if isinstance(optimizer, cls):
            return slots
    raise ValueError(
        "Argument `optimizer` must be a keras.optimizers.Adam or SGD (the optimisers whose per-variable slots are "
        f"known). Received: optimizer={type(optimizer).__name__}"
    )


def slot_powers(optimizer: keras.optimizers.Optimizer) -> dict[str, int]:
    """The slots `optimizer` holds, `{name: power of the gradient it scales with}` (`"velocity_hats"` only with
    amsgrad; none before the optimiser is built, none for SGD without momentum).

    Raises:
        ValueError: for an optimiser other than Adam (and subclasses) or SGD.
    """
    return {
        name: power
        for name, (attribute, power) in _slot_attributes(optimizer).items()
        if getattr(optimizer, attribute, None)  # absent before `build`; SGD without momentum keeps `[]`
    }


def get_slot(optimizer: keras.optimizers.Optimizer, name: str, variable) -> keras.Variable:
    """The slot `name` (e.g. `"momentums"`) that `optimizer` keeps for `variable`, same shape as `variable`.

    Graph-safe: the lookup happens when a `tf.function` is traced. The optimiser must be built on `variable`.
    """
    slots = _slot_attributes(optimizer)
    if name not in slots:
        raise ValueError(
            f"Argument `name` must be one of {list(slots)} for {type(optimizer).__name__}. Received: name={name!r}"
        )
    return getattr(optimizer, slots[name][0])[optimizer._get_variable_index(variable)]


def slot_variables(optimizer: keras.optimizers.Optimizer) -> list[keras.Variable]:
    """Every slot variable of a built Adam or SGD optimiser (all names, all model variables)."""
    return [
        slot
        for name, (attribute, _) in _slot_attributes(optimizer).items()
        if name in slot_powers(optimizer)
        for slot in getattr(optimizer, attribute)
        if slot is not None
    ]


def learning_rate_schedule(
    optimizer: keras.optimizers.Optimizer,
) -> keras.optimizers.schedules.LearningRateSchedule | None:
    """The schedule object `optimizer` evaluates at every step (e.g. an `SGDRSchedule`), or None for a constant
    learning rate. It is the very object passed in, so its own attributes (`cycle_ends`) are available."""
    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) else None
