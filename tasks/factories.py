"""Config sections -> library objects: the optimiser (SGDR with snapshots on), the fused model, `TrainConfig`, the
dtype policy and the data order a checkpoint must match. Shared by the training, growth and compare tasks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from ensemble.data import PreparedData
from ensemble.model.fused import FusedMLP, member_seed
from ensemble.optim.schedules import SGDRSchedule
from ensemble.training.train import TrainConfig
from tasks.config import ModelSection, OptimizerSection, SnapshotSection, TrainSection

# Seed 002's parameter names, shared by `SnapshotSection` and `SGDRSchedule.from_epochs`.
SGDR_FIELDS = {"cycle_length", "cycle_length_multiplier", "lr_init", "lr_min", "lr_multiplier"}
PIPELINE_ONLY = ("members_per_shard", "mixed_precision")  # TrainSection fields that are not TrainConfig's


def build_optimizer(
    section: OptimizerSection,
    snapshots: SnapshotSection | None,
    steps_per_epoch: int,
    epochs: int | None = None,
) -> keras.optimizers.Optimizer:
    """The Keras optimiser; with snapshots on, its learning rate is the SGDR schedule of a run of `epochs` epochs
    (`sgdr_schedule`)."""
    learning_rate = section.learning_rate
    if snapshots is not None and snapshots.enabled:
        if epochs is None or epochs < 1:
            raise ValueError(
                f"Argument `epochs` must be >= 1 with snapshots on (SGDR). Received: epochs={epochs}"
            )
        learning_rate = sgdr_schedule(snapshots, steps_per_epoch, epochs)
    if section.name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=section.momentum, nesterov=section.nesterov)


def sgdr_schedule(snapshots: SnapshotSection, steps_per_epoch: int, epochs: int) -> SGDRSchedule:
    """The SGDR schedule of the snapshot section for a run of `epochs` epochs: its first cycle lasts
    `snapshots.cycle_length_for(epochs)` epochs. Growth rounds continue the same schedule (the optimiser's), so
    they end at the same cycle ends."""
    arguments = snapshots.model_dump(include=SGDR_FIELDS) | {
        "cycle_length": snapshots.cycle_length_for(epochs)
    }
    return SGDRSchedule.from_epochs(steps_per_epoch=steps_per_epoch, **arguments)


def sgdr_plan(snapshots: SnapshotSection, steps_per_epoch: int, epochs: int) -> str:
    """The SGDR cycles of a run of `epochs` epochs, in words.

    Raises:
        ValueError: the run would stop mid-cycle and so lose its last snapshot (`check_whole_cycles` says how
            to fix it).
    """
    cycles = sgdr_schedule(snapshots, steps_per_epoch, epochs).check_whole_cycles(
        epochs * steps_per_epoch, steps_per_epoch
    )
    return (
        f"SGDR: {cycles} cycle(s) in {epochs} epochs, the first of {snapshots.cycle_length_for(epochs)} epochs "
        f"(snapshots.cycles={snapshots.cycles}, cycle_length={snapshots.cycle_length})"
    )


def train_config(section: TrainSection, **changes) -> TrainConfig:
    """The library's `TrainConfig` of the train section (its pipeline-only fields dropped), with `changes`."""
    return TrainConfig(**{**section.model_dump(exclude=set(PIPELINE_ONLY)), **changes})


def build_model(
    prepared: PreparedData, model: ModelSection, member_offset: int, init_scale: np.ndarray | None = None
) -> FusedMLP:
    """Members `member_offset + n` with seeds `member_seed(model.seed, member_offset + n)`, as in a one-shard run;
    `init_scale` `(N,)`: each member's initialisation scale (a sweep's), None: as initialised."""
    fused = FusedMLP(
        model.members,
        prepared.num_features,
        model.hidden_units,
        task=prepared.task,
        num_classes=max(prepared.num_classes, 2),
        activation=model.activation,
        seed=model.seed,
        member_seeds=[member_seed(model.seed, member_offset + n) for n in range(model.members)],
    )
    if init_scale is not None:
        fused.scale_kernels(init_scale)
    return fused


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Build (or load) Keras layers under the dtype policy `name` (None: unchanged); restored on exit.

    Keras keeps the policy per thread, so concurrent shard tasks do not see each other's.
    """
    previous = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def data_order(train: TrainSection, member_offset: int, members: int) -> dict:
    """What a member's data order depends on (`ensemble.training.train.epoch_indices`); stored in every checkpoint."""
    return {
        "seed": train.seed,
        "bagging": train.bagging,
        "batch_size": train.batch_size,
        "member_offset": member_offset,
        "members": members,
    }


def check_same_data_order(checkpoint: Path, state: dict, order: dict) -> None:
    """Refuse to resume a checkpoint written with another data order (`data_order`): it would not reproduce the
    run."""
    saved = state.get("data_order")
    if saved is not None and saved != order:
        raise ValueError(
            f"The checkpoint in {checkpoint} was written with data order {saved}, but this run uses {order}: "
            "resuming would not reproduce the run. Restore those train/model settings or delete the checkpoint."
        )
