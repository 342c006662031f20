"""Sharded training: split N members into contiguous shards, train each alone, merge them back into one ensemble.

A shard of members `k..k+m-1` is an ordinary `FusedMLP` of m members with seeds `member_seed(seed, k + n)`
trained with `TrainConfig(member_offset=k)`, so every member sees exactly the initial weights and data order it
would see in a single run of all N members. Members never interact (summed losses, elementwise optimisers), hence merging the
shards' weights, optimiser slots, snapshots and per-member curves along the member axis gives the one-run result.

Axes: `(N, ...)` = members first in every stacked weight and optimiser slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from ensemble.checks import check_int
from ensemble.model.member_model import MemberModel
from ensemble.snapshots.collector import Snapshots
from ensemble.training.checkpoint import load_checkpoint, read_record, save_checkpoint, write_record

# Epoch-log scalars that are means over members: recomputed over all members when shards are merged.
MEMBER_MEANS = {
    "loss": "member_loss",
    "accuracy": "member_accuracy",
    "val_loss": "member_val_loss",
    "val_accuracy": "member_val_accuracy",
}
# Epoch-log scalars of the whole ensemble that no shard can compute alone: dropped from merged logs.
ENSEMBLE_ONLY = ("val_ensemble_accuracy",)


def shard_ranges(members: int, members_per_shard: int | None) -> list[tuple[int, int]]:
    """`(offset, count)` of each shard: contiguous member ranges of at most `members_per_shard` members.

    E.g. `shard_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]`; `members_per_shard=None` gives one shard.
    """
    check_int(members, "members")
    if members_per_shard is not None:
        check_int(members_per_shard, "members_per_shard")
    size = int(members_per_shard or members)
    return [(offset, min(size, members - offset)) for offset in range(0, members, size)]


def merge_models(models: Sequence[MemberModel]) -> MemberModel:
    """One fused model holding the members of `models` in order: weights `(sum N_s, ...)`, seeds concatenated."""
    first = models[0]
    for model in models[1:]:
        if [w.shape[1:] for w in model.get_weights()] != [w.shape[1:] for w in first.get_weights()]:
            raise ValueError("Shards must share one architecture to be merged; their layer shapes differ.")
    stacked = [np.concatenate(ws) for ws in zip(*(m.get_weights() for m in models), strict=True)]
    seeds = [s for m in models for s in m.member_seeds]
    return type(first).from_weights(type(first).stacked_config(first.get_config(), stacked, seeds), stacked)


def merge_optimizers(
    optimizers: Sequence[keras.optimizers.Optimizer], model: MemberModel
) -> keras.optimizers.Optimizer:
    """The shards' optimiser state on the merged model: slots concatenated along members, scalars (iterations,
    learning rate) shared. Valid for elementwise optimisers, the only ones `fit` accepts."""
    optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(optimizers[0]))
    optimizer.build(model.trainable_variables)
    for i, variable in enumerate(optimizer.variables):
        values = [keras.ops.convert_to_numpy(opt.variables[i]) for opt in optimizers]
        if values[0].ndim == 0:
            if any(v != values[0] for v in values):
                raise ValueError(f"Shards disagree on optimizer variable {variable.path}: {values}")
            variable.assign(values[0])
        else:
            variable.assign(np.concatenate(values))
    return optimizer


def merge_snapshots(parts: Sequence[Snapshots], offsets: Sequence[int], model_config: dict) -> Snapshots:
    """The shards' snapshots keyed by global member index `offset + member`."""
    merged = Snapshots(model_config, steps=parts[0].steps, model_class=parts[0].model_class)
    for part, offset in zip(parts, offsets, strict=True):
        for (member, cycle), weights in part.weights.items():
            merged.weights[(offset + member, cycle)] = weights
        for (member, cycle), scores in part.scores.items():
            merged.scores[(offset + member, cycle)] = scores
    return merged


def merge_epoch_logs(parts: Sequence[list[tuple[int, dict]]]) -> list[tuple[int, dict]]:
    """Per-epoch logs of all members: per-member lists concatenated, member means recomputed over all members,
    ensemble-only values (e.g. `val_ensemble_accuracy`) dropped, shared values (`lr`) taken from the first shard."""
    merged = []
    for epoch_logs in zip(*parts, strict=True):
        epoch, first = epoch_logs[0]
        logs = {k: v for k, v in first.items() if k not in ENSEMBLE_ONLY and not k.startswith("member_")}
        for key in [k for k in first if k.startswith("member_")]:
            logs[key] = [v for _, shard in epoch_logs for v in shard[key]]
        for mean_key, member_key in MEMBER_MEANS.items():
            if member_key in logs:
                logs[mean_key] = float(np.mean(logs[member_key]))
        if "unit_gradients" in first:  # per layer (N_s, H) -> (N, H)
            logs["unit_gradients"] = [
                np.concatenate(layer).tolist()
                for layer in zip(*(shard["unit_gradients"] for _, shard in epoch_logs), strict=True)
            ]
        merged.append((epoch, logs))
    return merged


def merge_checkpoints(
    shard_dirs: Sequence[str | Path], offsets: Sequence[int], target: str | Path, **state
) -> Path:
    """Merge the final checkpoints (weights, optimiser, record, snapshots) of shards into one checkpoint.

    Args:
        shard_dirs: each shard's checkpoint directory (written by `EpochCheckpoint`), in member order.
        offsets: each shard's first global member index.
        target: where the merged checkpoint goes; it resumes (e.g. growth rounds) like a one-shard checkpoint.
        **state: JSON values for the merged checkpoint's `state.json` (e.g. the merged run's data order).
    """
    loaded = [load_checkpoint(d) for d in shard_dirs]
    records = [read_record(d) for d in shard_dirs]
    epochs = {state["epoch"] for _, _, state in loaded}
    if len(epochs) != 1:
        raise ValueError(f"Shards stopped at different epochs {sorted(epochs)}; they cannot be merged.")
    model = merge_models([m for m, _, _ in loaded])
    optimizer = merge_optimizers([o for _, o, _ in loaded], model)
    snapshots = None
    if all(r["snapshots"] is not None for r in records):
        snapshots = merge_snapshots([r["snapshots"] for r in records], offsets, model.get_config())
    return save_checkpoint(
        target,
        model,
        optimizer,
        epochs.pop(),
        write_extra=lambda directory: write_record(
            directory,
            merge_epoch_logs([r["epochs"] for r in records]),
            records[0]["steps"],
            records[0]["learning_rates"],
            snapshots=snapshots,
            cycle_ends=records[0]["cycle_ends"],
        ),
        **state,
    )
