"""Widen a fused MLP by splitting hidden units, for all members at once, without changing what it computes.

Axes: `(N, in, H)` = members, inputs, hidden units; `(N, H, out)` for the weights leaving the layer.

A split copies a unit's incoming weights and bias into a new unit (Net2Net widening, seed 001). The unit and its
copy then produce the same activation `h`, so giving them outgoing weights `w/2 + d` and `w/2 - d` keeps the next
layer's input `(w/2 + d) h + (w/2 - d) h = w h` unchanged, while the random `d` (small, per member and output)
makes their gradients differ, so training pulls the two copies apart. Seed 001 instead nudges the two biases by
`+/- bias_nudge`; that also breaks the symmetry but changes the outputs slightly, so it is off by default.

Copies are appended after the existing units: new unit `H + j` of member `n` copies unit `units[n, j]`.
`source_index (N, H + k)` names the old unit each new position comes from; the same gather transforms the
optimiser's slots (see `split_slots`), so Adam/momentum state stays aligned with the weights.

`grow_model` does the surgery on a `FusedMLP` and its optimiser: a new, wider model (same seeds and config), and a
new optimiser of the same class and config (the very same learning-rate schedule object) built on the new
variables, with `iterations` and the transformed slots assigned, so training and the schedule continue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import keras
import numpy as np
from keras import ops

from ensemble.model.fused import FusedMLP
from ensemble.optim.optimizer_state import get_slot, learning_rate_schedule, slot_powers, slot_variables

SlotMode = Literal["copy", "zero"]
SLOT_MODES: tuple[str, ...] = ("copy", "zero")


class SplitWeights(NamedTuple):
    """The widened weights of one split; `source_index (N, H + k)` = the old unit each new unit copies."""

    w_in: np.ndarray  # (N, in, H + k)
    b_in: np.ndarray  # (N, H + k)
    w_out: np.ndarray  # (N, H + k, out)
    source_index: np.ndarray  # (N, H + k) int


def all_units(members: int, width: int) -> np.ndarray:
    """Every unit of every member, `(N, H)`: splitting them doubles the layer (seed 001)."""
    return np.tile(np.arange(width), (members, 1))


def top_units(scores, k: int) -> np.ndarray:
    """The `k` units with the largest score, per member: `scores (N, H) -> (N, k)` indices, ascending.

    With scores = accumulated |dL/dW| per unit over the last epoch (`TrainConfig(track_unit_gradients=True)`),
    these are seed 001's "neurons undergoing the most change". Ties go to the lower index.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"Argument `scores` must have shape (N, H). Received: shape={scores.shape}")
    if not 1 <= int(k) <= scores.shape[1]:
        raise ValueError(f"Argument `k` must be in [1, {scores.shape[1]}] (the layer width). Received: k={k}")
    order = np.argsort(-scores, axis=1, kind="stable")[:, : int(k)]  # (N, k)
    return np.sort(order, axis=1)


def check_units(units, members: int, width: int) -> np.ndarray:
    """`units` as an int array `(N, k)` of distinct unit indices per member in `[0, width)`.

    Raises:
        ValueError: on a wrong shape, an index out of range or a unit listed twice for one member.
    """
    units = np.asarray(units)
    if units.ndim != 2 or units.shape[0] != members or units.shape[1] < 1:
        raise ValueError(
            f"Argument `units` must have shape (N={members}, k>=1): the units to split, per member. "
            f"Received: shape={units.shape}"
        )
    if not np.issubdtype(units.dtype, np.integer):
        raise ValueError(f"Argument `units` must hold integer unit indices. Received: dtype={units.dtype}")
    if units.min() < 0 or units.max() >= width:
        raise ValueError(
            f"Argument `units` must hold indices in [0, {width}). Received: [{units.min()}, {units.max()}]"
        )
    if any(len(np.unique(row)) != len(row) for row in units):
        raise ValueError(
            "Argument `units` must not list a unit twice for one member (split it once per call)."
        )
    return units.astype("int64")


def split_mask(source_index: np.ndarray) -> np.ndarray:
    """`(N, H + k)` bool: True for both halves of every split unit (the original and its copy)."""
    counts = np.stack([np.bincount(row, minlength=row.max() + 1) for row in source_index])  # (N, H)
    return np.take_along_axis(counts, source_index, axis=1) > 1


def split_units(
    w_in,
    b_in,
    w_out,
    units,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.01,
    bias_nudge: float = 0.0,
    directions=None,
    delta: float = 0.0,
) -> SplitWeights:
    """Split `units` of one hidden layer, per member, preserving the function (unless `bias_nudge > 0`, or
    `delta > 0`: then as `delta -> 0`).

    Args:
        w_in: incoming kernel `(N, in, H)`.
        b_in: bias `(N, H)`.
        w_out: outgoing kernel `(N, H, out)` (the next hidden layer's or the head's).
        units: `(N, k)` distinct unit indices per member (rows may differ between members).
        rng: generator (or seed) for the symmetry-breaking offsets `d`.
        noise: scale of `d ~ noise * rms(w_out[n]) * Normal(0, 1)`, shape `(N, k, out)`, relative to the RMS of
            member n's outgoing weights. The outputs are unchanged for any value; 0 leaves the copies identical
            (and, with `bias_nudge=0`, gradient descent keeps them identical).
        bias_nudge: seed 001's nudge: the original unit's bias `+ bias_nudge`, the copy's `- bias_nudge`.
            Changes the outputs slightly (by about `bias_nudge * |w_out|`); 0 disables it.
        directions: `(N, k, in + 1)` unit vectors over `[incoming weights; bias]` (splitting steepest descent,
            `ensemble.growth.splitting`): the unit moves to `theta + s v`, its copy to `theta - s v`, with
            `s = delta * |theta|`. The outputs change by `O(delta^2)` (by 0 at `delta=0`).
        delta: step along `directions`, relative to the norm of the unit's `theta = [w_in; b_in]`.

    Returns:
        `SplitWeights(w_in (N, in, H+k), b_in (N, H+k), w_out (N, H+k, out), source_index (N, H+k))`.
    """
    w_in, b_in, w_out = np.asarray(w_in), np.asarray(b_in), np.asarray(w_out)
    if w_in.ndim != 3 or b_in.shape != (w_in.shape[0], w_in.shape[2]) or w_out.shape[:2] != b_in.shape:
        raise ValueError(
            "Expected w_in (N, in, H), b_in (N, H), w_out (N, H, out). Received: "
            f"w_in={w_in.shape}, b_in={b_in.shape}, w_out={w_out.shape}"
        )
    if noise < 0 or bias_nudge < 0 or delta < 0:
        raise ValueError(
            "Arguments `noise`, `bias_nudge` and `delta` must be >= 0. "
            f"Received: noise={noise}, bias_nudge={bias_nudge}, delta={delta}"
        )
    members, width = b_in.shape
    units = check_units(units, members, width)
    if directions is not None and np.shape(directions) != (*units.shape, w_in.shape[1] + 1):
        raise ValueError(
            f"Argument `directions` must have shape (N, k, in + 1) = {(*units.shape, w_in.shape[1] + 1)}. "
            f"Received: shape={np.shape(directions)}"
        )
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    source_index = np.concatenate([all_units(members, width), units], axis=1)  # (N, H + k)
    new_w_in = np.take_along_axis(w_in, source_index[:, None, :], axis=2)  # (N, in, H + k)
    new_b_in = np.take_along_axis(b_in, source_index, axis=1).astype("float64")  # (N, H + k)
    half = np.take_along_axis(w_out, units[:, :, None], axis=1).astype("float64") / 2  # (N, k, out)
    rms = np.sqrt(np.mean(np.square(w_out, dtype="float64"), axis=(1, 2)))  # (N,)
    rms = np.where(rms > 0, rms, 1.0)
    d = noise * rms[:, None, None] * rng.standard_normal(half.shape)  # (N, k, out)

    new_w_out = np.concatenate([w_out.astype("float64"), half - d], axis=1)  # (N, H + k, out)
    rows = np.arange(members)[:, None]  # (N, 1)
    new_w_out[rows, units] = half + d
    new_b_in[rows, units] += bias_nudge
    new_b_in[:, width:] -= bias_nudge
    if directions is not None and delta > 0:
        theta = np.concatenate([new_w_in[:, :, width:], new_b_in[:, None, width:]], axis=1)  # (N, in + 1, k)
        step = (
            delta * np.linalg.norm(theta, axis=1)[:, None, :] * np.swapaxes(directions, 1, 2)
        )  # (N, in + 1, k)
        new_w_in = new_w_in.astype("float64")
        new_w_in[rows, :, units] = new_w_in[rows, :, units] + np.swapaxes(step[:, :-1], 1, 2)
        new_w_in[:, :, width:] -= step[:, :-1]
        new_b_in[rows, units] += step[:, -1]
        new_b_in[:, width:] -= step[:, -1]
    return SplitWeights(
        new_w_in.astype(w_in.dtype), new_b_in.astype(b_in.dtype), new_w_out.astype(w_out.dtype), source_index
    )


def split_slots(
    s_in, s_bias, s_out, source_index: np.ndarray, power: int, mode: SlotMode = "copy"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transform one optimiser slot of a split layer like `split_units` transformed the weights.

    Right after a split both copies of a unit get the same outgoing-weight gradient as the unit had (their
    activations are equal), and about half its incoming-weight and bias gradient (their outgoing weights are
    about half). So with `mode="copy"` (default) every new unit takes its source's slots, scaled on the incoming
    side by `0.5 ** power` for the split units (Adam's m: power 1, v: power 2; SGD momentum: power 1): the
    optimiser's state is what it would be had the split network seen the past gradients, and Adam's step size
    stays the same. With `mode="zero"` both halves of every split unit restart from zero slots. Note that
    Keras Adam corrects its bias with the global step count, so a zeroed Adam moment yields a first step of
    about `(1 - beta_1) / sqrt(1 - beta_2)` (~3x) a normal step for those weights; "copy" avoids that jolt.

    Args:
        s_in: slot of the incoming kernel `(N, in, H)`; s_bias: of the bias `(N, H)`; s_out: of the outgoing
            kernel `(N, H, out)`.
        source_index: `(N, H + k)` from `split_units`.
        power: power of the gradient the slot scales with.
        mode: `"copy"` or `"zero"`.

    Returns:
        `(s_in (N, in, H+k), s_bias (N, H+k), s_out (N, H+k, out))`.
    """
    if mode not in SLOT_MODES:
        raise ValueError(f"Argument `mode` must be one of {SLOT_MODES}. Received: mode={mode!r}")
    split = split_mask(source_index)  # (N, H + k)
    s_in = np.take_along_axis(np.asarray(s_in), source_index[:, None, :], axis=2)  # (N, in, H + k)
    s_bias = np.take_along_axis(np.asarray(s_bias), source_index, axis=1)  # (N, H + k)
    s_out = np.take_along_axis(np.asarray(s_out), source_index[:, :, None], axis=1)  # (N, H + k, out)
    if mode == "zero":
        scale_in = scale_out = np.where(split, 0.0, 1.0)  # (N, H + k)
    else:
        scale_in, scale_out = np.where(split, 0.5**power, 1.0), np.ones(split.shape)
    return (
        (s_in * scale_in[:, None, :]).astype(s_in.dtype),
        (s_bias * scale_in).astype(s_bias.dtype),
        (s_out * scale_out[:, :, None]).astype(s_out.dtype),
    )


def grow_model(
    model: FusedMLP,
    optimizer: keras.optimizers.Optimizer,
    splits: Mapping[int, object],
    *,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.01,
    bias_nudge: float = 0.0,
    optimizer_slots: SlotMode = "copy",
    directions: Mapping[int, np.ndarray] | None = None,
    delta: float = 0.0,
) -> tuple[FusedMLP, keras.optimizers.Optimizer]:
    """A wider copy of `model` and its optimiser, with the given units split in every member.

    Args:
        model: the fused ensemble (left unchanged).
        optimizer: its Adam or SGD optimiser (built or not; left unchanged).
        splits: `{hidden layer index: units}`, units `"all"` (double the layer) or `(N, k)` int indices per
            member (e.g. from `top_units`). Layers are split in increasing order; indices refer to the widths
            before this call.
        rng: generator (or seed) for the symmetry-breaking offsets.
        noise, bias_nudge: see `split_units`.
        optimizer_slots: `"copy"` or `"zero"`, see `split_slots`.
        directions: `{layer: (N, k, in + 1)}` split directions of the units in `splits[layer]` (splitting steepest
            descent, see `split_units`), over the layer's inputs before this call; when the layer below is split
            in the same call, a direction's component on a split input is shared equally by its two copies.
        delta: step along `directions`, see `split_units`.

    Returns:
        `(new_model, new_optimizer)`: a `FusedMLP` with the wider `hidden_units` and the same seeds/config, and
        an optimiser of the same class and config (same learning-rate schedule object, same `iterations`), built
        on the new model's variables. Without `bias_nudge`, `new_model(x)` equals `model(x)` up to float error.
    """
    if optimizer_slots not in SLOT_MODES:
        raise ValueError(
            f"Argument `optimizer_slots` must be one of {SLOT_MODES}. Received: optimizer_slots={optimizer_slots!r}"
        )
    if not splits:
        raise ValueError(f"Argument `splits` must name at least one hidden layer. Received: splits={splits}")
    for layer in splits:
        if not 0 <= int(layer) < len(model.hidden_units):
            raise ValueError(
                f"Keys of `splits` must be hidden layer indices in [0, {len(model.hidden_units)}). "
                f"Received: {layer}"
            )
    slots = slot_powers(optimizer)  # {slot name: power}; ValueError for an optimiser other than Adam or SGD
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def numpy_of(variables):  # per dense layer: [kernel, bias] as NumPy
        return [[ops.convert_to_numpy(v) for v in pair] for pair in variables]

    weights = numpy_of((layer.kernel, layer.bias) for layer in model.dense_layers)
    slot_weights = {
        name: numpy_of(
            (get_slot(optimizer, name, layer.kernel), get_slot(optimizer, name, layer.bias))
            for layer in model.dense_layers
        )
        for name in slots
    }
    directions, below = dict(directions or {}), None  # below: source_index of the layer split just before
    for layer in sorted(int(i) for i in splits):
        units = splits[layer]
        if isinstance(units, str):
            if units != "all":
                raise ValueError(f'Units to split must be "all" or an (N, k) int array. Received: {units!r}')
            units = all_units(model.members, model.hidden_units[layer])
        (w_in, b_in), (w_out, b_out) = weights[layer], weights[layer + 1]
        direction = directions.get(layer)
        if direction is not None and below is not None and below[1] == layer - 1:
            direction = widen_inputs(np.asarray(direction), below[0])
        split = split_units(
            w_in,
            b_in,
            w_out,
            units,
            rng=rng,
            noise=noise,
            bias_nudge=bias_nudge,
            directions=direction,
            delta=delta,
        )
        below = (split.source_index, layer)
        weights[layer], weights[layer + 1] = [split.w_in, split.b_in], [split.w_out, b_out]
        for name, power in slots.items():
            (s_in, s_b), (s_out, s_b_out) = slot_weights[name][layer], slot_weights[name][layer + 1]
            s_in, s_b, s_out = split_slots(s_in, s_b, s_out, split.source_index, power, optimizer_slots)
            slot_weights[name][layer], slot_weights[name][layer + 1] = [s_in, s_b], [s_out, s_b_out]

    widths = [w.shape[-1] for w, _ in weights[:-1]]
    new_model = FusedMLP.from_weights(
        {**model.get_config(), "hidden_units": widths}, [w for pair in weights for w in pair]
    )
    new_optimizer = rebuild_optimizer(optimizer, new_model)
    for name, per_layer in slot_weights.items():
        for layer, (kernel, bias) in zip(new_model.dense_layers, per_layer, strict=True):
            get_slot(new_optimizer, name, layer.kernel).assign(kernel)
            get_slot(new_optimizer, name, layer.bias).assign(bias)
    return new_model, new_optimizer


def widen_inputs(directions: np.ndarray, source_index: np.ndarray) -> np.ndarray:
    """Directions `(N, k, in + 1)` over a layer's inputs -> over its inputs after the layer below was split
    (`source_index (N, in')`): a split input's component is shared equally by its copies, so `v . x~` is kept."""
    copies = np.stack(
        [np.bincount(row, minlength=directions.shape[2] - 1) for row in source_index]
    )  # (N, in)
    weights, bias = directions[..., :-1] / copies[:, None, :], directions[..., -1:]  # (N, k, in), (N, k, 1)
    widened = np.take_along_axis(
        weights,
        np.broadcast_to(source_index[:, None, :], (*weights.shape[:2], source_index.shape[1])),
        axis=2,
    )
    return np.concatenate([widened, bias], axis=2)  # (N, k, in' + 1)


def rebuild_optimizer(optimizer: keras.optimizers.Optimizer, model: FusedMLP) -> keras.optimizers.Optimizer:
    """A new optimiser of the same class and config, built on `model`'s variables.

    It keeps the very same learning-rate schedule object, and copies `iterations`, the learning-rate variable and
    every other optimiser variable whose shape did not change. Slots whose shape changed are left at zero for the
    caller to fill (`grow_model` does).

    Raises:
        ValueError: when the optimiser holds per-variable state that is not a known slot (EMA, gradient
            accumulation), which could not be carried through a split.
    """
    config = optimizer.get_config()
    schedule = learning_rate_schedule(optimizer)
    if schedule is not None:
        config["learning_rate"] = schedule
    new = type(optimizer).from_config(config)
    new.build(model.trainable_variables)
    known = {id(v) for v in slot_variables(new)}
    old_vars, new_vars = optimizer.variables, new.variables
    if len(old_vars) != len(new_vars):
        raise ValueError(
            f"Cannot rebuild optimizer {type(optimizer).__name__}: its variables differ in number."
        )
    for old, fresh in zip(old_vars, new_vars, strict=True):
        if id(fresh) in known:
            continue
        if tuple(old.shape) != tuple(fresh.shape):
            raise ValueError(
                f"Optimizer variable `{fresh.path}` changes shape in a split and is not a slot growth can carry "
                "(EMA and gradient accumulation are not supported with growth)."
            )
        fresh.assign(old)
    return new


@keras.saving.register_keras_serializable(package="ensemble")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`scale` times another learning-rate schedule; its cycle ends (if it has any) are the same.

    Args:
        schedule: the schedule to scale (e.g. an `SGDRSchedule`).
        scale: the factor, > 0.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, scale: float):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"Argument `scale` must be > 0. Received: scale={scale}")
        self.schedule, self.scale = schedule, float(scale)

    def __call__(self, step):
        return self.scale * self.schedule(step)

    @property
    def cycle_ends(self):
        """The scaled schedule's `cycle_ends`; an AttributeError (so `hasattr` is False) when it has none."""
        return self.schedule.cycle_ends

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "scale": self.scale}

    @classmethod
    def from_config(cls, config: dict) -> ScaledSchedule:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["scale"])


def scale_learning_rate(optimizer: keras.optimizers.Optimizer, factor: float) -> None:
    """Multiply `optimizer`'s learning rate by `factor` from now on.

    A schedule is wrapped in a `ScaledSchedule` (or, if it is one, its scale multiplied), so it continues at the
    same step with the same cycle ends; a constant learning rate is reassigned.

    Why growth calls it with `old width / new width` after a split: Adam's step per weight does not shrink when a
    layer gets more inputs, so the change one step makes to the next layer's input grows with the width (as does
    SGD's, whose gradient norm grows with the number of inputs). Without the correction, doubling a layer about
    doubles the effective learning rate of the layer after it; muP (Yang et al., 2021) scales Adam's learning rate
    of hidden layers by 1 / fan-in for the same reason.
    """
    if not factor > 0:
        raise ValueError(f"Argument `factor` must be > 0. Received: factor={factor}")
    schedule = learning_rate_schedule(optimizer)
    if isinstance(schedule, ScaledSchedule):
        optimizer.learning_rate = ScaledSchedule(schedule.schedule, schedule.scale * factor)
    elif schedule is not None:
        optimizer.learning_rate = ScaledSchedule(schedule, factor)
    else:
        optimizer.learning_rate = float(ops.convert_to_numpy(optimizer.learning_rate)) * factor
