"""SGDR: cosine annealing with warm restarts, evaluated per optimiser step inside the compiled step.

One object gives both the learning rate and the cycle boundaries, so the steps at which snapshots are taken are
exactly the steps at which the learning rate restarts.

Step convention (Keras): the optimiser calls the schedule with `iterations`, the number of steps already done, so
step `s = 0` is the first step and uses `lr_init`. A cycle *end* is a count of steps done (1-based): cycle `k`
covers steps `start_k .. end_k - 1` and the weights after step `end_k - 1` are its snapshot.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ensemble.checks import check_int

MAX_STEPS = 2**31 - 1
"""Cycles of a growing schedule are tabulated up to this many steps (or `MAX_CYCLES`)."""
MAX_CYCLES = 100_000


def cycle_lengths(
    cycle_length: float, cycle_length_multiplier: float, max_steps: int = MAX_STEPS
) -> list[int]:
    """Whole-step lengths of the cycles that start before `max_steps`: `ceil(cycle_length * multiplier**k)`.

    The ceiling is what seed 002's callback does (it restarts at the first batch at or past the cycle's end); a
    value within 1e-9 of an integer counts as that integer, so `0.1 * 3 * 10` steps is 3 steps, not 4.
    """
    lengths, total = [], 0
    while total < max_steps and len(lengths) < MAX_CYCLES:
        length = max(1, math.ceil(round(cycle_length * cycle_length_multiplier ** len(lengths), 9)))
        lengths.append(length)
        total += length
        if cycle_length_multiplier == 1.0:  # every cycle is the same: one entry describes them all
            break
    return lengths


@keras.saving.register_keras_serializable(package="ensemble")
class SGDRSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing with warm restarts (Loshchilov & Hutter, 2017) with seed 002's parameters.

    In cycle `k` (0-based), which starts at step `start_k` and lasts `n_k = ceil(cycle_length *
    cycle_length_multiplier**k)` steps, the learning rate at step `s` is

        lr(s) = lr_multiplier**k * (lr_min + (lr_init - lr_min) / 2 * (1 + cos(pi * (s - start_k) / n_k)))

    so a cycle starts at exactly `lr_init * lr_multiplier**k` and its last step is just above
    `lr_min * lr_multiplier**k`. `lr_multiplier` scales the whole cycle, floor included, as seed 002's callback does
    ("multiplier on learning rate per cycle": it multiplies both `lr_max` and `lr_min` at each restart).

    Why not `keras.optimizers.schedules.CosineDecayRestarts`: its floor `alpha * initial_learning_rate` does not
    shrink with `m_mul` (only the amplitude does), its cycle lengths are real numbers (a restart can fall between
    two steps, where no snapshot can be taken) and, with `t_mul != 1`, it finds the cycle of a step through a
    float32 logarithm that can put a boundary step into the wrong cycle. Here the cycle boundaries are whole steps,
    computed once in Python and looked up in the graph, so `cycle_ends` and the learning rate agree exactly. Where
    the formulas coincide (`lr_min = 0` or `lr_multiplier = 1`, whole cycle lengths) both give the same values.

    Args:
        cycle_length: steps in the first cycle (>= 1; a float is rounded up per cycle, see `cycle_lengths`). Use
            `SGDRSchedule.from_epochs` to give it in epochs.
        cycle_length_multiplier: each cycle is this many times longer than the previous one (>= 1).
        lr_init: learning rate at the start of the first cycle (its maximum), > 0.
        lr_min: learning rate approached at the end of the first cycle, in `[0, lr_init]`.
        lr_multiplier: factor applied to the whole curve of each following cycle (> 0).
        name: name scope of the graph ops.

    Beyond `MAX_CYCLES` cycles (or 2**31 steps) of a growing schedule the learning rate stays at the last cycle's
    floor.
    """

    def __init__(
        self,
        cycle_length: float,
        cycle_length_multiplier: float = 1.0,
        lr_init: float = 0.01,
        lr_min: float = 0.0,
        lr_multiplier: float = 1.0,
        name: str = "SGDRSchedule",
    ):
        super().__init__()
        checks = (  # (argument, value, valid, what it must be)
            ("cycle_length", cycle_length, cycle_length >= 1, ">= 1 (steps)"),
            (
                "cycle_length_multiplier",
                cycle_length_multiplier,
                cycle_length_multiplier >= 1,
                ">= 1 (shrinking cycles would end in one-step cycles)",
            ),
            ("lr_init", lr_init, lr_init > 0, "> 0"),
            ("lr_min", lr_min, 0 <= lr_min <= lr_init, f"in [0, lr_init={lr_init}]"),
            ("lr_multiplier", lr_multiplier, lr_multiplier > 0, "> 0"),
        )
        for arg, value, valid, rule in checks:
            if not (math.isfinite(value) and valid):
                raise ValueError(f"Argument `{arg}` must be {rule}. Received: {arg}={value}")
        self.cycle_length = float(cycle_length)
        self.cycle_length_multiplier = float(cycle_length_multiplier)
        self.lr_init = float(lr_init)
        self.lr_min = float(lr_min)
        self.lr_multiplier = float(lr_multiplier)
        self.name = name
        self._lengths = cycle_lengths(self.cycle_length, self.cycle_length_multiplier)
        self._ends = np.cumsum(self._lengths, dtype=np.int64)  # (K,) step counts at which cycles end

    @classmethod
    def from_epochs(cls, cycle_length: float, steps_per_epoch: int, **kwargs) -> SGDRSchedule:
        """A schedule whose first cycle lasts `cycle_length` epochs of `steps_per_epoch` steps (seed 002's unit).

        `kwargs` are the other constructor arguments. The result's `cycle_length` is in steps.
        """
        check_int(steps_per_epoch, "steps_per_epoch")
        if not cycle_length > 0:
            raise ValueError(
                f"Argument `cycle_length` must be > 0 (epochs). Received: cycle_length={cycle_length}"
            )
        return cls(cycle_length=cycle_length * int(steps_per_epoch), **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # The learning rate (graph-safe)
    # ------------------------------------------------------------------------------------------------------------

    def __call__(self, step):
        """Learning rate at `step` (steps already done; a scalar or an integer tensor of any shape), float32."""
        with tf.name_scope(self.name):
            s = tf.cast(step, tf.int64)
            if self.cycle_length_multiplier == 1.0:  # equal cycles: closed form, in integers
                length = self._lengths[0]
                k = s // length
                elapsed = tf.cast(s - k * length, tf.float64) / length
                scale = tf.pow(tf.constant(self.lr_multiplier, tf.float64), tf.cast(k, tf.float64))
            else:  # growing cycles: look the cycle up in the table of cycle ends
                last = len(self._lengths) - 1
                k = tf.searchsorted(tf.constant(self._ends), tf.reshape(s, [-1]), side="right")
                k = tf.reshape(tf.minimum(k, last), tf.shape(s))  # cycle of each step, same shape as `step`
                start = tf.gather(tf.constant(self._ends - self._lengths), k)
                length = tf.gather(tf.constant(self._lengths, tf.float64), k)
                elapsed = tf.minimum(tf.cast(s - start, tf.float64) / length, 1.0)
                scale = tf.gather(tf.constant(self.lr_multiplier ** np.arange(last + 1.0)), k)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * elapsed))  # 1 at a cycle's start, -> 0 at its end
            return tf.cast(scale * (self.lr_min + (self.lr_init - self.lr_min) * cosine), tf.float32)

    # ------------------------------------------------------------------------------------------------------------
    # Cycle boundaries (Python ints, from the table the graph uses)
    # ------------------------------------------------------------------------------------------------------------

    def cycle_length_at(self, cycle: int) -> int:
        """Length in steps of cycle `cycle` (0-based)."""
        if self.cycle_length_multiplier == 1.0:
            return self._lengths[0]
        return self._lengths[min(int(cycle), len(self._lengths) - 1)]

    def cycle_ends(self, total_steps: int) -> list[int]:
        """Step counts (1-based) at which a cycle ends, for every cycle that ends within `total_steps` steps."""
        total_steps = int(total_steps)
        if self.cycle_length_multiplier == 1.0:
            return list(range(self._lengths[0], total_steps + 1, self._lengths[0]))
        return [int(end) for end in self._ends[self._ends <= total_steps]]

    def cycle_starts(self, total_steps: int) -> list[int]:
        """Steps (0-based) at which a cycle starts, for every cycle that starts before `total_steps`."""
        return [start for start in [0, *self.cycle_ends(total_steps)] if start < int(total_steps)]

    def steps_for_cycles(self, num_cycles: int) -> int:
        """Total steps of a run of exactly `num_cycles` whole cycles."""
        return sum(self.cycle_length_at(k) for k in range(check_int(num_cycles, "num_cycles")))

    def check_whole_cycles(self, total_steps: int, steps_per_epoch: int | None = None) -> int:
        """Number of cycles in a run of `total_steps` steps, which must end exactly at a cycle end.

        Args:
            total_steps: steps of the whole run (from step 0).
            steps_per_epoch: only used to also give run lengths in epochs in the error message.

        Raises:
            ValueError: the run would end inside a cycle, which would then yield no snapshot; the message names the
                nearest run lengths that end at a cycle end.
        """
        ends = self.cycle_ends(total_steps)
        if ends and ends[-1] == int(total_steps):
            return len(ends)
        before = ends[-1] if ends else None
        after = (before or 0) + self.cycle_length_at(len(ends))

        def describe(steps: int) -> str:
            return f"{steps} steps" + (f" = {steps / steps_per_epoch:g} epochs" if steps_per_epoch else "")

        options = " or ".join(describe(steps) for steps in (before, after) if steps)
        raise ValueError(
            f"A run of {describe(int(total_steps))} ends inside SGDR cycle {len(ends)} (0-based), so that cycle "
            f"would yield no snapshot. Train for a whole number of cycles: {options}."
        )

    def get_config(self) -> dict:
        return {
            "cycle_length": self.cycle_length,
            "cycle_length_multiplier": self.cycle_length_multiplier,
            "lr_init": self.lr_init,
            "lr_min": self.lr_min,
            "lr_multiplier": self.lr_multiplier,
            "name": self.name,
        }
