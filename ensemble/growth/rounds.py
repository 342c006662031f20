"""Growth rounds: train until the validation metric plateaus, split units (`ensemble.growth.split`), repeat.

Seed 001's recipe for all members at once: start small (e.g. 2 hidden units), train until the monitored metric
stops improving (`min_delta`, `patience`, as Keras' `EarlyStopping`), then widen the network without changing its
function and keep training with the same optimiser state, step count and learning-rate schedule. Every round is
recorded (`GrowthRound`): widths, parameters, FLOPs, epochs, and the metric at the round's start, right before and
right after the split (the last two agree because the split preserves the outputs).

With a cyclic learning-rate schedule (SGDR: the optimiser's schedule has `cycle_ends`), rounds end at cycle ends:
the plateau detector only compares the values at epoch ends where a cycle ends (mid-cycle values are measured at a
high learning rate and say little), so `patience` counts cycles, and a round that reaches its epoch cap runs on to
the end of its cycle. A split therefore always happens at the lowest learning rate, and the new width starts with
the restart. The schedule itself is never restarted or changed: epochs and steps continue across rounds. Without a
cyclic schedule, `anneal_epochs` gives each round the same shape: after the plateau the learning rate is annealed
(cosine, per epoch) to `ANNEAL_TO` times its value, the split happens there, and the next round restarts at the
full learning rate.

Growth stops at `max_rounds`, when no layer can grow (`max_width`), when a round gained nothing on validation
(`stop_without_gain`: the width before the split was enough), or, with `strategy="splitting"`, when no unit of any
member has a negative splitting index (no split lowers the loss, `ensemble.growth.splitting`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import keras
import numpy as np

from ensemble.checks import check_int, is_int
from ensemble.evaluation.metrics import EPOCH_SCORES, monitor_mode
from ensemble.growth.split import (
    SLOT_MODES,
    SlotMode,
    all_units,
    grow_model,
    scale_learning_rate,
    top_units,
)
from ensemble.growth.splitting import SplittingIndex, most_negative_units, splitting_index
from ensemble.model.flops import training_flops
from ensemble.model.fused import FusedMLP
from ensemble.optim.optimizer_state import learning_rate_schedule
from ensemble.optim.schedules import MAX_STEPS
from ensemble.training.train import TrainConfig, evaluate_members, fit, schedule_cycle_ends

MONITORS: tuple[str, ...] = tuple(EPOCH_SCORES)  # the registry `ensemble.evaluation.metrics.EPOCH_SCORES`
STRATEGIES: tuple[str, ...] = ("all", "targeted", "splitting")
ANNEAL_TO = 0.01  # `anneal_epochs` ends a round at this fraction of the learning rate


@dataclass(frozen=True)
class GrowthConfig:
    """When and how to grow.

    Attributes:
        monitor: validation metric that detects a plateau: `"val_accuracy"` (mean over members),
            `"val_ensemble_accuracy"` or `"val_loss"`.
        min_delta: a value improves on the best one of the round (initially the value at the round's start; with
            `anneal_epochs` the round's first epoch) only by more than this.
        patience: epochs (with an SGDR schedule: cycles) without improvement before the round ends (0 acts as 1:
            the first non-improving one ends it). With `anneal_epochs`, a round's first epoch is its first best
            (its start value was measured at the annealed rate, which full-rate epochs do not reach at once).
        max_width: no grown layer gets wider than this; growth stops when no layer can grow.
        max_rounds: number of splits; training runs `max_rounds + 1` rounds (the last one without a split).
        strategy: `"all"` splits every unit (doubles the layer; seed 001); `"targeted"` splits, per member, the
            `units_per_split` units with the largest |dL/dW| accumulated over the round's last epoch;
            `"splitting"` splits, per member, the units with the most negative splitting index (splitting steepest
            descent, `ensemble.growth.splitting`), moving the two copies apart along its eigenvector by `+/- delta`.
        units_per_split: k for `"targeted"` (required there); for `"splitting"` the most units split per layer
            and round (None: up to the layer's width): every member splits k units, k = the most negative-index
            units of any member; ignored for `"all"`.
        layers: hidden layers to grow each round; None grows all of them.
        noise: symmetry-breaking offset scale, see `ensemble.growth.split.split_units` (keeps the function). With
            `"splitting"` the directions already break the symmetry, and offsets on copies whose incoming weights
            differ change the function to first order in `delta` (0 keeps it to second order).
        bias_nudge: seed 001's bias nudge (changes the function slightly); 0 disables it.
        optimizer_slots: `"copy"` or `"zero"`, see `ensemble.growth.split.split_slots`.
        lr_width_scaling: after each split, multiply the learning rate by the hidden units before / after the
            split (`ensemble.growth.split.scale_learning_rate`: without it, each doubling about doubles the effective
            step of the layers after the grown ones, and wide rounds train worse than narrow ones).
        delta: `"splitting"`: the copies move by `+/- delta * |theta|` along the eigenvector (`theta`: the unit's
            incoming weights and bias); the function is kept as delta -> 0.
        anneal_epochs: without a cyclic schedule, epochs at the end of every round in which the learning rate is
            annealed (cosine) to `ANNEAL_TO` x its value, so the round converges before the split (as SGDR's cycle
            ends do); the next round restarts at the full rate. Must be 0 with a cyclic schedule.
        stop_without_gain: stop growing when a round (after the first) ends no better than it started on the
            monitored metric (by `min_delta`): the width before the last split was enough.
        seed: seed of the symmetry-breaking offsets (and of the rows the splitting index is computed on).
    """

    monitor: str = "val_accuracy"
    min_delta: float = 0.0
    patience: int = 2
    max_width: int = 256
    max_rounds: int = 3
    strategy: Literal["all", "targeted", "splitting"] = "all"
    units_per_split: int | None = None
    layers: tuple[int, ...] | None = None
    noise: float = 0.01
    bias_nudge: float = 0.0
    optimizer_slots: SlotMode = "copy"
    lr_width_scaling: bool = True
    delta: float = 0.1
    anneal_epochs: int = 0
    stop_without_gain: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.monitor not in MONITORS:
            raise ValueError(
                f"Argument `monitor` must be one of {MONITORS}. Received: monitor={self.monitor!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"Argument `strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.optimizer_slots not in SLOT_MODES:
            raise ValueError(
                f"Argument `optimizer_slots` must be one of {SLOT_MODES}. "
                f"Received: optimizer_slots={self.optimizer_slots!r}"
            )
        for name, minimum in (("patience", 0), ("max_width", 1), ("max_rounds", 0), ("anneal_epochs", 0)):
            check_int(getattr(self, name), name, minimum)
        for name in ("min_delta", "noise", "bias_nudge", "delta"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={getattr(self, name)!r}")
        if self.strategy == "targeted" and not is_int(self.units_per_split, 1):
            raise ValueError(
                'Argument `units_per_split` must be an int >= 1 with strategy="targeted". '
                f"Received: units_per_split={self.units_per_split!r}"
            )
        if (
            self.strategy == "splitting"
            and self.units_per_split is not None
            and not is_int(self.units_per_split, 1)
        ):
            raise ValueError(
                'Argument `units_per_split` must be None (up to the width) or an int >= 1 with strategy="splitting". '
                f"Received: units_per_split={self.units_per_split!r}"
            )
        if self.layers is not None:
            layers = tuple(int(i) for i in self.layers)
            if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
                raise ValueError(
                    "Argument `layers` must be None or distinct hidden layer indices >= 0. "
                    f"Received: layers={self.layers!r}"
                )
            object.__setattr__(self, "layers", layers)

    @property
    def mode(self) -> str:
        """`"min"` for a loss, `"max"` for an accuracy (`ensemble.evaluation.metrics.monitor_mode`)."""
        return monitor_mode(self.monitor)

    def get_config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GrowthRound:
    """What one round did: trained at `widths` until a plateau, then (unless it was the last) split.

    Attributes:
        round: 0-based round index.
        widths: hidden widths trained in this round.
        params: trainable parameters of the whole ensemble at `widths`.
        flops_per_sample: forward FLOPs per sample of the whole ensemble (`ensemble_flops`).
        epochs_trained: epochs run in this round.
        train_flops: training FLOPs of the round, `3 * flops_per_sample * samples seen per member`.
        plateau: True when the plateau detector ended the round, False when it hit `TrainConfig.epochs`.
        val_start: the monitored metric at the start of the round (round 0: of the model growth started from).
        val_before_split: the monitored metric at the end of the round (before any split).
        val_after_split: the same metric right after the split; None for the last round.
        new_widths: hidden widths after the split; None for the last round.
        train_seconds: wall time of the round's training.
        split_seconds: wall time of the split (model and optimiser surgery, and the splitting index); 0 for the
            last round.
        split_units: the units split, `{layer: (N, k) nested list}` per member; None for the last round.
        split_index: `"splitting"`: the splitting index of those units, same layout; otherwise None.
        stop_reason: the last round: why growth stopped (`"max_rounds"`, `"max_width"`, `"no_gain"` or
            `"splitting_stable"`); "" for the others.
    """

    round: int
    widths: tuple[int, ...]
    params: int
    flops_per_sample: int
    epochs_trained: int
    train_flops: int
    plateau: bool
    val_start: float
    val_before_split: float
    val_after_split: float | None
    new_widths: tuple[int, ...] | None
    train_seconds: float
    split_seconds: float
    split_units: dict[int, list[list[int]]] | None = None
    split_index: dict[int, list[list[float]]] | None = None
    stop_reason: str = ""

    def as_dict(self) -> dict:
        """A flat row for a table: widths joined as `"4-8"`, None as NaN, the split units as JSON text."""
        row = asdict(self)
        row["split_units"] = json.dumps(self.split_units) if self.split_units else ""
        row["split_index"] = json.dumps(self.split_index) if self.split_index else ""
        row["widths"] = "-".join(map(str, self.widths))
        row["new_widths"] = "-".join(map(str, self.new_widths)) if self.new_widths else ""
        row["val_after_split"] = np.nan if self.val_after_split is None else self.val_after_split
        return row


def monitored_value(
    model: FusedMLP, x_val, y_val, monitor: str, jit_compile: bool | str = "auto", combiner: str = "mean"
) -> float:
    """The monitored validation metric of `model`, computed as `fit`'s epoch logs compute it (`combiner`:
    `TrainConfig.combiner`, for `val_ensemble_accuracy`)."""
    scores = evaluate_members(model, np.asarray(x_val, "float32"), np.asarray(y_val), jit_compile, combiner)
    key = monitor.removeprefix("val_")
    return float(scores[key]) if key == "ensemble_accuracy" else float(np.mean(scores[key]))


def is_better(value: float, reference: float, mode: str, min_delta: float = 0.0) -> bool:
    """`value` beats `reference` by more than `min_delta` (`mode` `"max"`: higher is better, `"min"`: lower)."""
    return value > reference + min_delta if mode == "max" else value < reference - min_delta


def grown_is_not_worse(rounds: Sequence[GrowthRound], mode: str) -> bool:
    """Whether the grown model (the last round's end) is at least as good on the monitored metric as the model
    growth started from (round 0's start). A model that growth made worse (or NaN) should not replace it."""
    end = rounds[-1].val_before_split
    return bool(np.isfinite(end)) and not is_better(rounds[0].val_start, end, mode)


class RoundEnd(keras.callbacks.Callback):
    """Ends a growth round at a plateau: after `patience` checkpoints in a row that do not beat the round's best
    value (initially `start_value`; None: the first checkpoint's value, as Keras' `EarlyStopping`) by more than
    `min_delta`.

    Checkpoints are epoch ends; when `fit` reports cycle ends (`params["cycle_ends"]`, an SGDR schedule), only the
    epoch ends whose last step ends a cycle. `plateau` tells whether the detector ended the round.
    """

    def __init__(self, monitor: str, mode: str, min_delta: float, patience: int, start_value: float | None):
        super().__init__()
        self.monitor, self.mode, self.min_delta, self.patience = monitor, mode, min_delta, patience
        worst = -math.inf if mode == "max" else math.inf
        self.best, self.wait, self.plateau = worst if start_value is None else start_value, 0, False
        self._cycle_ends: set[int] = set()
        self._step = -1

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._cycle_ends = set(self.params.get("cycle_ends", ()))

    def on_steps_end(self, logs: dict) -> None:
        self._step = logs["steps"][-1]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._cycle_ends and self._step not in self._cycle_ends:
            return  # mid-cycle: not comparable with the values at cycle ends
        value = (logs or {})[self.monitor]
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.plateau = self.model.stop_training = True


def round_stop_epoch(
    optimizer: keras.optimizers.Optimizer, start_epoch: int, epochs: int, steps_per_epoch: int
) -> int:
    """The epoch count at which a round that starts at `start_epoch` (and at the optimiser's current step) ends
    at the latest: `start_epoch + epochs`, or, with a cyclic schedule, the first epoch end at or after that at
    which a cycle ends.

    Raises:
        ValueError: that cycle does not end at an epoch end (cycle lengths that are not whole epochs).
    """
    start = int(optimizer.iterations)
    cap = start + epochs * steps_per_epoch
    horizon = cap
    while True:  # look further ahead until a cycle ends (without a cyclic schedule none ever does)
        later = [end for end in schedule_cycle_ends(optimizer, horizon) if end >= cap]
        if later or horizon >= MAX_STEPS:
            break
        horizon = min(2 * horizon, MAX_STEPS)
    if not later:
        return start_epoch + epochs
    steps, rest = divmod(later[0] - start, steps_per_epoch)
    if rest:
        raise ValueError(
            f"Growth rounds end at learning-rate cycle ends, but the cycle that ends at step {later[0]} ends "
            f"{rest} steps into an epoch of {steps_per_epoch} steps. Use cycles of whole epochs (e.g. an integer "
            "`cycle_length` in epochs and a `cycle_length_multiplier` whose powers keep it whole)."
        )
    return start_epoch + steps


def grown_layers(model: FusedMLP, config: GrowthConfig) -> list[int]:
    """The hidden layers growth may still widen: those of `config.layers` (None: all) below `max_width`."""
    layers = range(len(model.hidden_units)) if config.layers is None else config.layers
    return [layer for layer in layers if model.hidden_units[layer] < config.max_width]


def planned_splits(
    model: FusedMLP,
    config: GrowthConfig,
    unit_gradients: Sequence[np.ndarray] | None,
    indices: dict[int, SplittingIndex] | None = None,
) -> dict[int, np.ndarray]:
    """The units to split this round, `{layer: (N, k)}`, respecting `max_width` (empty: nothing can grow).

    `"all"` splits every unit (or, when the cap allows fewer, the first ones); `"targeted"` splits the top-k
    units by `unit_gradients[layer]` `(N, H)`; `"splitting"` the k units with the most negative splitting index
    (`indices[layer]`), k = the most units with a negative index in any member (capped by `units_per_split`): a
    layer where no member has one is not split.
    """
    splits = {}
    for layer in grown_layers(model, config):
        width = model.hidden_units[layer]
        wanted = width if config.strategy == "all" else config.units_per_split
        if config.strategy == "splitting":
            negative = int((indices[layer].eigenvalues < 0).sum(axis=1).max())
            wanted = negative if wanted is None else min(wanted, negative)
        k = min(wanted, config.max_width - width, width)
        if k < 1:
            continue
        if config.strategy == "all":
            splits[layer] = all_units(model.members, width)[:, :k]
        elif config.strategy == "targeted":
            splits[layer] = top_units(unit_gradients[layer], k)
        else:
            splits[layer] = most_negative_units(indices[layer].eigenvalues, k)
    return splits


def split_rows(rounds: Sequence[GrowthRound]) -> list[dict]:
    """The units each split chose, one row per round, layer, member and unit: `round`, `layer`, `member`,
    `unit`, and `splitting_index` (NaN unless the strategy is `"splitting"`)."""
    rows = []
    for r in rounds:
        for layer, per_member in (r.split_units or {}).items():
            for member, units in enumerate(per_member):
                index = (r.split_index or {}).get(layer, [[np.nan] * len(units)] * len(per_member))[member]
                rows += [
                    dict(
                        round=r.round, layer=int(layer), member=member, unit=int(u), splitting_index=float(i)
                    )
                    for u, i in zip(units, index, strict=True)
                ]
    return rows


class Anneal(keras.callbacks.Callback):
    """Cosine-anneals a constant learning rate over `epochs` epochs from `initial_epoch`, per epoch, to
    `ANNEAL_TO` x its value in the last one (`anneal_epochs`); `restore()` sets it back."""

    def __init__(self, optimizer: keras.optimizers.Optimizer, initial_epoch: int, epochs: int):
        super().__init__()
        self.optimizer, self.initial_epoch, self.epochs = optimizer, initial_epoch, epochs
        self.base = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        fraction = (1 + math.cos(math.pi * (epoch - self.initial_epoch + 1) / self.epochs)) / 2
        self.optimizer.learning_rate = self.base * (ANNEAL_TO + (1 - ANNEAL_TO) * fraction)

    def restore(self) -> None:
        self.optimizer.learning_rate = self.base


def grow_rounds(
    model: FusedMLP,
    optimizer: keras.optimizers.Optimizer,
    data,
    train_config: TrainConfig,
    growth_config: GrowthConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> tuple[FusedMLP, keras.optimizers.Optimizer, list[GrowthRound]]:
    """Train, split at each plateau, and train on, for up to `max_rounds` splits.

    Args:
        model: the starting (narrow) fused ensemble.
        optimizer: its Adam or SGD optimiser; a split replaces it by a rebuilt one that continues its state.
        data: anything with `x_train`, `y_train`, `x_val`, `y_val` (e.g. `PreparedData`).
        train_config: training settings; `epochs` caps each round (a plateau usually ends it sooner; with a
            cyclic schedule the cap is extended to the next cycle end, see `round_stop_epoch`). Epoch numbers
            continue across rounds, and so do the optimiser's step count and schedule.
        growth_config: see `GrowthConfig`.
        callbacks: Keras callbacks passed to every round's `fit` (they see the current model).
        initial_epoch: number of the first epoch (e.g. the epochs an earlier training phase already ran).

    Returns:
        `(model, optimizer, rounds)`: the grown model, its optimiser, and one `GrowthRound` per round.
    """
    config = growth_config
    if model.task == "regression" and config.monitor != "val_loss":
        raise ValueError(
            f'Argument `monitor` must be "val_loss" for regression. Received: monitor={config.monitor!r}'
        )
    if config.layers is not None and max(config.layers) >= len(model.hidden_units):
        raise ValueError(
            f"Argument `layers` must index hidden layers in [0, {len(model.hidden_units)}). "
            f"Received: layers={config.layers}"
        )
    if config.anneal_epochs and hasattr(learning_rate_schedule(optimizer), "cycle_ends"):
        raise ValueError(
            "Argument `anneal_epochs` must be 0 with a cyclic learning-rate schedule (SGDR): rounds then end at "
            f"cycle ends, where the rate is lowest. Received: anneal_epochs={config.anneal_epochs}"
        )
    targeted = config.strategy == "targeted"
    train_config = replace(train_config, track_unit_gradients=train_config.track_unit_gradients or targeted)
    validation = (data.x_val, data.y_val)
    steps_per_epoch = len(data.x_train) // train_config.batch_size
    samples_per_epoch = steps_per_epoch * train_config.batch_size
    rng = np.random.default_rng(config.seed)
    rounds, epoch = [], int(initial_epoch)
    start_value = monitored_value(
        model, *validation, config.monitor, train_config.jit_compile, train_config.combiner
    )
    for index in range(config.max_rounds + 1):
        stop_epoch = round_stop_epoch(optimizer, epoch, train_config.epochs, steps_per_epoch)
        # With `anneal_epochs` the round's start value was measured at the annealed rate, which the round's epochs
        # at the full rate do not reach at once: the first of them is the first best (like with like).
        first_best = None if config.anneal_epochs else start_value
        plateau = RoundEnd(config.monitor, config.mode, config.min_delta, config.patience, first_best)
        start = time.perf_counter()
        history = fit(
            model,
            data.x_train,
            data.y_train,
            optimizer=optimizer,
            config=replace(train_config, epochs=stop_epoch),
            validation_data=validation,
            callbacks=[*callbacks, plateau],
            initial_epoch=epoch,
        )
        epochs, stopped = len(history.epoch), plateau.plateau
        if config.anneal_epochs:  # converge before the split: the end of the round's "cycle"
            anneal = Anneal(optimizer, epoch + epochs, config.anneal_epochs)
            annealed = fit(
                model,
                data.x_train,
                data.y_train,
                optimizer=optimizer,
                config=replace(train_config, epochs=epoch + epochs + config.anneal_epochs),
                validation_data=validation,
                callbacks=[*callbacks, anneal],
                initial_epoch=epoch + epochs,
            )
            anneal.restore()
            epochs += len(annealed.epoch)
            history.history["unit_gradients"] = annealed.history.get("unit_gradients")
        train_seconds = time.perf_counter() - start
        epoch += epochs
        if train_config.jit_compile == "auto" and not history.uses_xla:
            # XLA failed on this model (one warning said why): the grown models retrace as plain graphs.
            train_config = replace(train_config, jit_compile=False)
        before = monitored_value(
            model, *validation, config.monitor, train_config.jit_compile, train_config.combiner
        )
        flops = model.forward_flops()
        record = dict(
            round=index,
            widths=tuple(model.hidden_units),
            params=int(model.count_params()),
            flops_per_sample=flops,
            epochs_trained=epochs,
            train_flops=training_flops(flops, epochs * samples_per_epoch),
            plateau=stopped,
            val_start=start_value,
            val_before_split=before,
            train_seconds=train_seconds,
        )
        start = time.perf_counter()
        reason, splits, indices = stop_reason(model, config, index, start_value, before), {}, None
        if not reason:
            if config.strategy == "splitting":
                indices = {
                    layer: splitting_index(model, data.x_train, data.y_train, layer, seed=config.seed + index)
                    for layer in grown_layers(model, config)
                }
            gradients = history.history["unit_gradients"][-1] if targeted else None
            splits = planned_splits(model, config, gradients, indices)
            reason = "" if splits else ("splitting_stable" if indices else "max_width")
        if reason:
            rounds.append(
                GrowthRound(
                    **record, val_after_split=None, new_widths=None, split_seconds=0.0, stop_reason=reason
                )
            )
            break
        directions = None
        if indices:
            directions = {
                layer: np.take_along_axis(indices[layer].directions, units[:, :, None], axis=1)  # (N, k, D)
                for layer, units in splits.items()
            }
        model, optimizer = grow_model(
            model,
            optimizer,
            splits,
            rng=rng,
            noise=config.noise,
            bias_nudge=config.bias_nudge,
            optimizer_slots=config.optimizer_slots,
            directions=directions,
            delta=config.delta,
        )
        if config.lr_width_scaling:
            scale_learning_rate(optimizer, sum(record["widths"]) / sum(model.hidden_units))
        split_seconds = time.perf_counter() - start
        after = start_value = monitored_value(
            model, *validation, config.monitor, train_config.jit_compile, train_config.combiner
        )
        rounds.append(
            GrowthRound(
                **record,
                val_after_split=after,
                new_widths=tuple(model.hidden_units),
                split_seconds=split_seconds,
                split_units={layer: units.tolist() for layer, units in splits.items()},
                split_index=None
                if indices is None
                else {
                    layer: np.take_along_axis(indices[layer].eigenvalues, units, axis=1).tolist()
                    for layer, units in splits.items()
                },
            )
        )
    return model, optimizer, rounds


def stop_reason(model: FusedMLP, config: GrowthConfig, index: int, start: float, end: float) -> str:
    """Why growth stops after round `index` (which went from `start` to `end` on the monitored metric), before
    looking at units: `"max_rounds"`, `"max_width"` (no layer can grow), `"no_gain"` (`stop_without_gain`), or
    "" (go on)."""
    if index >= config.max_rounds:
        return "max_rounds"
    if not grown_layers(model, config):
        return "max_width"
    if config.stop_without_gain and index > 0 and not is_better(end, start, config.mode, config.min_delta):
        return "no_gain"
    return ""
