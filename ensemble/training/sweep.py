"""Many configurations in one fused run: a grid or random space of per-member hyper-parameters, expanded to members.

A sweep varies what stays per member in the fused step (nothing mixes members, so member n still equals a separate
run with its own settings):

- `learning_rate`: member n's optimiser steps with `learning_rate[n] / base_learning_rate` times the run's learning
  rate (`TrainConfig.lr_scales`); with SGDR, `lr_init` becomes the swept value and `lr_min` scales with it.
- `weight_decay`: an L2 penalty `weight_decay * sum(W**2)` on the member's kernels (`TrainConfig.weight_decay`).
- `init_scale`: the member's initial kernels times this factor (`FusedMLP.scale_kernels`).
- `bagging`: whether the member trains on its own bootstrap resample (`TrainConfig.bagging`).

Each configuration is trained `repeats` times (members with different seeds). Member order: configuration-major,
member `n` is repeat `n % repeats` of configuration `n // repeats`.

Options that couple members (norm clipping: the norm of a stacked variable covers every member) cannot be swept.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

from ensemble.checks import check_int

SWEEPABLE: dict[str, float | bool | None] = {
    "learning_rate": None,  # None: the run's own learning rate (`base_learning_rate`)
    "weight_decay": 0.0,
    "init_scale": 1.0,
    "bagging": None,  # None: the run's `bagging`
}
"""What a sweep can vary, with each one's value when it is not swept."""

COUPLING = ("clipnorm", "global_clipnorm")
"""Options a sweep cannot vary: they couple members (see `ensemble.optim.optimizers.check_elementwise`)."""


def check_values(name: str, values: list) -> list:
    """Validate one swept parameter's values (a grid's list, or a random space's choices); returns them.

    Raises:
        ValueError: an unknown or member-coupling name, an empty list, a non-positive learning rate or init scale,
            a negative weight decay, a non-bool bagging; the message says what to give instead.
    """
    if name in COUPLING:
        raise ValueError(
            f"sweep.{name} cannot be swept: {name} (norm clipping) takes the norm over all members' stacked weights, "
            f"so it would couple the members of a fused run. Sweep one of {list(SWEEPABLE)}."
        )
    if name not in SWEEPABLE:
        raise ValueError(f"sweep.{name} is not a sweepable parameter; use one of {list(SWEEPABLE)}.")
    if len(values) == 0:
        raise ValueError(f"sweep.{name} is empty: give at least one value (e.g. {name}: [{example(name)}]).")
    for value in values:
        if name == "bagging":
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"sweep.bagging values must be true or false. Received: {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"sweep.{name} values must be finite numbers. Received: {value!r}")
        elif name == "weight_decay" and value < 0:
            raise ValueError(f"sweep.weight_decay must be >= 0 (0: no decay). Received: {value}")
        elif name in ("learning_rate", "init_scale") and value <= 0:
            raise ValueError(f"sweep.{name} values must be > 0. Received: {value}")
    return list(values)


def example(name: str) -> str:
    return {
        "learning_rate": "0.001, 0.01",
        "weight_decay": "0, 0.0001",
        "init_scale": "1.0",
        "bagging": "false",
    }[name]


@dataclass(frozen=True)
class SweepConfig:
    """A space of configurations and how many members train each.

    Attributes:
        space: parameter -> values (`SWEEPABLE` names). `kind="grid"`: every combination of the lists. `kind=
            "random"`: `samples` draws, each parameter either from its list of choices or, given as
            `{"low": a, "high": b, "log": bool}`, uniformly (log-uniformly with `log`) from `[a, b]`.
        kind: `"grid"` or `"random"`.
        samples: number of configurations drawn (random only).
        repeats: members per configuration (seeds), >= 1.
        seed: seed of the random draws.
    """

    space: dict = field(default_factory=dict)
    kind: str = "grid"
    samples: int = 8
    repeats: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("grid", "random"):
            raise ValueError(f"Argument `kind` must be 'grid' or 'random'. Received: kind={self.kind!r}")
        check_int(self.repeats, "repeats")
        check_int(self.samples, "samples")
        if not self.space:
            raise ValueError(
                f"The sweep space is empty: give at least one parameter of {list(SWEEPABLE)} with its values."
            )
        for name, values in self.space.items():
            if isinstance(values, dict):
                check_range(name, values, self.kind)
            else:
                check_values(name, list(values))

    def get_config(self) -> dict:
        return asdict(self)

    def configurations(self) -> list[dict]:
        """The configurations, each `{parameter: value}` for the swept parameters, in a fixed order."""
        names = list(self.space)
        if self.kind == "grid":
            return [
                dict(zip(names, values, strict=True)) for values in itertools.product(*self.space.values())
            ]
        rng = np.random.default_rng(self.seed)
        return [{name: draw(self.space[name], rng) for name in names} for _ in range(self.samples)]

    @property
    def members(self) -> int:
        """Members of the fused run: configurations x repeats."""
        count = int(np.prod([len(v) for v in self.space.values()])) if self.kind == "grid" else self.samples
        return count * self.repeats

    def expand(self, base_learning_rate: float, bagging: bool = False) -> list[dict]:
        """One entry per member (configuration-major): `{"configuration", "repeat", "learning_rate",
        "weight_decay", "init_scale", "bagging", "lr_scale"}`; what is not swept takes the run's value
        (`base_learning_rate`, `bagging`) or its neutral one, and `lr_scale = learning_rate / base_learning_rate`."""
        if not base_learning_rate > 0:
            raise ValueError(f"Argument `base_learning_rate` must be > 0. Received: {base_learning_rate}")
        defaults = {**SWEEPABLE, "learning_rate": base_learning_rate, "bagging": bool(bagging)}
        members = []
        for c, configuration in enumerate(self.configurations()):
            values = {**defaults, **configuration}
            for r in range(self.repeats):
                members.append(
                    {
                        "configuration": c,
                        "repeat": r,
                        **values,
                        "lr_scale": float(values["learning_rate"]) / base_learning_rate,
                    }
                )
        return members


def check_range(name: str, spec: dict, kind: str) -> None:
    """A random space's `{"low", "high", "log"}` for a numeric parameter."""
    if kind != "random":
        raise ValueError(f"sweep.{name}: a range {spec} needs kind 'random'; a grid takes a list of values.")
    if name == "bagging" or set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
        raise ValueError(
            f"sweep.{name}: a range is {{low: a, high: b, log: true|false}} over a numeric parameter. Received: {spec}"
        )
    check_values(name, [spec["low"], spec["high"]])
    if spec["low"] > spec["high"] or (spec.get("log") and spec["low"] <= 0):
        raise ValueError(
            f"sweep.{name}: need 0 < low <= high for a log range, low <= high otherwise. Received: {spec}"
        )


def draw(values, rng: np.random.Generator):
    """One random draw of a parameter: a choice from a list, or uniform / log-uniform in a `{low, high}` range."""
    if not isinstance(values, dict):
        return values[int(rng.integers(len(values)))]
    low, high = float(values["low"]), float(values["high"])
    if values.get("log"):
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.uniform(low, high))


def member_settings(members: list[dict]) -> dict[str, tuple]:
    """The expanded members as the library's per-member arguments: `TrainConfig(lr_scales=, weight_decay=,
    bagging=)` and `FusedMLP.scale_kernels(init_scale)`; each a tuple `(N,)`."""
    return {
        "lr_scales": tuple(float(m["lr_scale"]) for m in members),
        "weight_decay": tuple(float(m["weight_decay"]) for m in members),
        "bagging": tuple(bool(m["bagging"]) for m in members),
        "init_scale": tuple(float(m["init_scale"]) for m in members),
    }
