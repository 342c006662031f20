"""Prefect task of the growth step: continue training from the trained checkpoint, splitting units at plateaus.

Growth can make a model worse. The task passes the grown model on (to evaluation and registration) only when it is
not worse on validation than the model growth started from (`ensemble.growth.rounds.grown_is_not_worse`, by
`growth.monitor`); otherwise it passes the pre-growth model on. Either way it says so: the parent run's tags
`growth_outcome` (`grown` or `pre-growth`) and `growth_reason`, and the Prefect log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import keras
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.growth.rounds import (
    GrowthConfig,
    GrowthRound,
    grow_rounds,
    grown_is_not_worse,
    split_rows,
)
from ensemble.training.checkpoint import load_checkpoint, save_checkpoint
from ensemble.training.progress import EpochProgress, format_epoch
from ensemble.training.record import RunRecord, RunRecorder
from ensemble.training.train import schedule_cycle_ends
from tasks.config import GrowthSection, TrainSection
from tasks.factories import train_config
from tasks.lr_curve import growth_epochs, log_growth_learning_rate
from tasks.tracking import Tracker, TrackingSettings, log_learning_rate_plot
from tasks.train import log_member_epochs
from tasks.trained import Trained, read_history


class RoundProgress(EpochProgress):
    """`growth round 2/4 (width 64-64)  epoch 3/10  loss ...`: epochs counted within the round, against its cap.

    Args:
        rounds: the most rounds there can be (`max_rounds + 1`).
        print_fn: where lines go (a logger's `info`).
    """

    def __init__(self, rounds: int, print_fn: Callable[[str], None] = print):
        super().__init__(0, print_fn)
        self.rounds, self.round, self._first_epoch, self._widths = rounds, 0, None, None

    def on_train_begin(self, logs: dict | None = None) -> None:
        # `grow_rounds` calls `fit` once per round (twice with `anneal_epochs`: the anneal continues the round)
        if tuple(self.model.hidden_units) != self._widths:
            self.round, self._first_epoch, self._widths = self.round + 1, None, tuple(self.model.hidden_units)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._first_epoch = epoch if self._first_epoch is None else self._first_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        widths = "-".join(map(str, self.model.hidden_units))
        prefix = f"growth round {self.round}/{self.rounds} (width {widths})  "
        cap = self.params["epochs"] - self._first_epoch  # `fit`'s `epochs` is the round's last epoch
        seconds = time.perf_counter() - self._started
        self.print_fn(format_epoch(epoch - self._first_epoch, cap, logs or {}, seconds, prefix))


@dataclass(frozen=True)
class Grown:
    """What the growth step hands on.

    Attributes:
        trained: the model passed on to evaluation and registration: the grown one (`model_path`, `checkpoint`)
            when `outcome` is "grown", else the pre-growth one; training's history and member runs either way.
        outcome: "grown" or "pre-growth" (the parent run's `growth_outcome` tag).
        reason: why, in one sentence (the `growth_reason` tag).
        rounds: the round table (`GrowthRound.as_dict()` rows).
        hidden_units: the widths of the model passed on.
    """

    trained: Trained
    outcome: str
    reason: str
    rounds: tuple[dict, ...]
    hidden_units: tuple[int, ...]


@task(name="grow", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def growth_task(
    settings: TrackingSettings,
    run_id: str,
    member_run_ids: list[str],
    data_dir: str,
    trained: Trained,
    growth: GrowthSection,
    train: TrainSection,
    run_dir: str,
    combiner: str = "mean",
) -> Grown:
    """Growth rounds on the trained ensemble; logs the round table, the members' curves (epochs continue), the
    learning rate of growth steps (`schedule/lr`, the global step continues) and the whole run's learning-rate plot.

    The model passed on is the grown one only when growth is kept (`grown_is_not_worse`). `combiner`
    (`evaluation.combiner`) combines the members for `growth.monitor=val_ensemble_accuracy`.
    """
    logger, run_dir = get_run_logger(), Path(run_dir)
    model, optimizer, state = load_checkpoint(trained.checkpoint)
    # GrowthSection's fields are GrowthConfig's arguments, minus the pipeline-only ones.
    config = GrowthConfig(**growth.model_dump(exclude={"enabled", "epochs_per_round"}), seed=train.seed)
    recorder = RunRecorder()  # every round's epochs and steps
    model, optimizer, rounds = grow_rounds(
        model,
        optimizer,
        PreparedData.load(data_dir),
        train_config(train, epochs=growth.epochs_per_round, combiner=combiner),
        config,
        callbacks=[recorder, RoundProgress(config.max_rounds + 1, logger.info)],
        initial_epoch=state["epoch"],
    )
    model.save(run_dir / "grown.keras")
    checkpoint = save_checkpoint(
        run_dir / "grown-checkpoint", model, optimizer, recorder.record.epochs[-1][0] + 1
    )
    kept = grown_is_not_worse(rounds, config.mode)
    outcome, reason = growth_outcome(rounds, config.monitor, kept)
    widths = tuple(rounds[-1].widths if kept else rounds[0].widths)  # of the model passed on
    tracker = Tracker(settings)
    log_rounds(tracker, run_id, rounds)
    log_member_epochs(tracker, run_id, member_run_ids, recorder.record.epochs)
    log_growth_curve(tracker, run_id, trained, recorder.record, rounds, optimizer, train, growth, run_dir)
    for member_run in member_run_ids:  # `hidden_units`/`width` are the widths training started with
        tracker.log_params(
            member_run, {"final_hidden_units": list(widths), "final_width": max(widths, default=0)}
        )
    tracker.set_tags(run_id, {"growth_outcome": outcome, "growth_reason": reason})
    for r in rounds:
        logger.info(describe_round(r, config.monitor))
    (logger.info if kept else logger.warning)(reason)
    grown = {"model_path": str(run_dir / "grown.keras"), "checkpoint": str(checkpoint)} if kept else {}
    rows = tuple(r.as_dict() for r in rounds)
    return Grown(replace(trained, **grown), outcome, reason, rows, widths)


def log_growth_curve(
    tracker: Tracker,
    run_id: str,
    trained: Trained,
    growth_record: RunRecord,
    rounds: list[GrowthRound],
    optimizer: keras.optimizers.Optimizer,
    train: TrainSection,
    growth: GrowthSection,
    run_dir: Path,
) -> None:
    """The growth steps' `schedule/lr` (at training's stride, each round's first and last step kept) and the
    whole run's learning-rate plot and exact curve (training's steps, then growth's)."""
    history = read_history(trained)
    steps, lrs = history["steps"] + growth_record.steps, history["lr"] + growth_record.learning_rates
    cycle_ends = schedule_cycle_ends(optimizer, steps[-1])
    log_growth_learning_rate(
        tracker,
        run_id,
        growth_record.steps,
        growth_record.learning_rates,
        [r.epochs_trained for r in rounds],
        cycle_ends,
        train.epochs,
        growth_epochs(growth),
        tracker.settings.lr_points,
    )
    log_learning_rate_plot(tracker, run_id, steps, lrs, cycle_ends, str(run_dir))


def growth_outcome(rounds: list[GrowthRound], monitor: str, kept: bool) -> tuple[str, str]:
    """`("grown" | "pre-growth", why)`: which model goes on to evaluation and registration, in one sentence."""
    before, after = rounds[0].val_start, rounds[-1].val_before_split
    widths = f"widths {'-'.join(map(str, rounds[0].widths))} -> {'-'.join(map(str, rounds[-1].widths))}"
    if kept:
        return "grown", (
            f"growth kept: the grown model's {monitor} {after:.4f} is not worse than {before:.4f} "
            f"before growth ({widths})"
        )
    return "pre-growth", (
        f"growth discarded: the grown model's {monitor} {after:.4f} is worse than {before:.4f} before "
        f"growth ({widths}); the pre-growth model is evaluated and registered instead"
    )


def describe_round(r: GrowthRound, monitor: str) -> str:
    """One log line per round (counted from 1, as `RoundProgress` does): widths, epochs, why it ended, the
    monitored value from start to end, and the split."""
    widths = "-".join(map(str, r.widths))
    ended = "plateau" if r.plateau else "epoch cap"
    line = (
        f"growth round {r.round + 1}: width {widths}, {r.epochs_trained} epochs (ended by {ended}), "
        f"{monitor} {r.val_start:.4f} -> {r.val_before_split:.4f}"
    )
    if r.new_widths is None:
        return f"{line}; last round, no split (growth stopped: {r.stop_reason or 'max_rounds'})"
    chosen = "; ".join(
        f"layer {layer}: member 0 units {units[0]}"
        + (f" (index down to {min(r.split_index[layer][0]):.3g})" if r.split_index else "")
        for layer, units in (r.split_units or {}).items()
    )
    return (
        f"{line}; split to {'-'.join(map(str, r.new_widths))} ({chosen}), {monitor} {r.val_after_split:.4f} "
        "after the split"
    )


def log_rounds(tracker: Tracker, run_id: str, rounds: list[GrowthRound]) -> None:
    """The round table (`growth_rounds.json`), the units each split chose per member (`growth_splits.json`: round,
    layer, member, unit, splitting_index) and the `growth/*` metrics of each round (`step` = round)."""
    tracker.log_table(run_id, [r.as_dict() for r in rounds], "growth_rounds.json")
    if any(r.split_units for r in rounds):
        tracker.log_table(run_id, split_rows(rounds), "growth_splits.json")
    tracker.log_metrics_at_steps(
        run_id,
        {
            r.round: {
                "growth/width": max(r.widths),
                "growth/params": r.params,
                "growth/epochs": r.epochs_trained,
                "growth/val_start": r.val_start,
                "growth/val_before_split": r.val_before_split,
                "growth/val_after_split": r.val_after_split,
                "growth/units_split": sum(len(units[0]) for units in (r.split_units or {}).values()),
            }
            for r in rounds
        },
    )
