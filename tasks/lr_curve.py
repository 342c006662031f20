"""The learning-rate curve in MLflow at bounded resolution: which optimiser steps the `schedule/lr` metric holds.

A run has one learning rate per optimiser step (700,000 for 10 epochs of a 70,000-row training split at batch 1);
the MLflow UI draws at most 320 sampled points of a curve, and every stored point costs the store a row. So the
metric holds at most about `lr_points` (`mlflow.yaml`) points: every `stride`-th step of the run as planned
(`lr_stride`, half of the points) plus the boundary steps (`boundary_steps`: the first and last step of every SGDR
cycle, of training and of every growth round), which are always kept. The exact per-step curve goes beside the
PNG as an artifact (`tasks.tracking.log_learning_rate_plot`: `plots/learning_rate.parquet`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mlflow.entities import Metric
from mlflow.utils.time import get_current_time_millis

LR_METRIC = "schedule/lr"


def lr_stride(planned_steps: int, lr_points: int) -> int:
    """Every how many steps a regular point is kept, so that a run of up to `planned_steps` steps yields at most
    `lr_points // 2` regular points (the other half is room for the boundary steps).

    >>> lr_stride(700_000, 1000), lr_stride(300, 1000)
    (1405, 1)
    """
    if planned_steps < 0 or lr_points < 4:
        raise ValueError(
            f"`planned_steps` must be >= 0 and `lr_points` >= 4. Received: planned_steps={planned_steps}, "
            f"lr_points={lr_points}"
        )
    return max(1, math.ceil(planned_steps / max(lr_points // 2 - 1, 1)))


def boundary_steps(cycle_ends: Iterable[int], segments: Iterable[tuple[int, int]]) -> set[int]:
    """The steps always kept: the first and last step of every segment (`(first, last)`, 1-based global steps:
    training, each growth round) and of every cycle inside them (a cycle ending at step e: e, and e + 1 if the
    segment goes on)."""
    keep: set[int] = set()
    for first, last in segments:
        keep |= {first, last}
        keep |= {e for end in cycle_ends if first <= end <= last for e in (end, end + 1) if e <= last}
    return keep


def kept_points(
    steps: Iterable[int], lrs: Iterable[float], stride: int, keep: set[int]
) -> list[tuple[int, float]]:
    """`(step, lr)` of the steps the metric holds: every `stride`-th step and those in `keep`."""
    return [(int(s), float(lr)) for s, lr in zip(steps, lrs, strict=True) if s % stride == 0 or s in keep]


def lr_metrics(points: Iterable[tuple[int, float]], now: int) -> list[Metric]:
    return [Metric(LR_METRIC, lr, now, step) for step, lr in points]


def planned_steps(steps_per_epoch: int, epochs: int, later_epochs: int = 0) -> int:
    """The most optimiser steps a run can take: training's `epochs` plus what growth may add (`later_epochs`)."""
    return steps_per_epoch * (epochs + later_epochs)


def log_growth_learning_rate(
    tracker,
    run_id: str,
    steps: list[int],
    lrs: list[float],
    round_epochs: list[int],
    cycle_ends: list[int],
    train_epochs: int,
    later_epochs: int,
    lr_points: int,
) -> None:
    """The `schedule/lr` points of the growth rounds (`steps`, `lrs`: every growth step; `round_epochs`: epochs
    of each round), at the stride training used (`lr_stride` of the same planned run), with the first and last
    step of each round and of each cycle."""
    if not steps:
        return
    steps_per_epoch = len(steps) // max(sum(round_epochs), 1)
    stride = lr_stride(planned_steps(steps_per_epoch, train_epochs, later_epochs), lr_points)
    segments, first = [], steps[0]
    for epochs in round_epochs:
        last = first + epochs * steps_per_epoch - 1
        segments.append((first, last))
        first = last + 1
    points = kept_points(steps, lrs, stride, boundary_steps(cycle_ends, segments))
    tracker.log_metric_batch(run_id, lr_metrics(points, get_current_time_millis()))


def growth_epochs(growth) -> int:
    """The most epochs growth rounds can add (`growth.max_rounds + 1` rounds of `epochs_per_round`; 0 when off)."""
    return (growth.max_rounds + 1) * growth.epochs_per_round if growth.enabled else 0
