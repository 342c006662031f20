"""Training checkpoints: a fused model, its optimiser's full state and the loop position, in one directory.

Layout: `model.keras` (architecture + weights), `optimizer.json` (Keras optimiser config, schedule included),
`optimizer.npz` (every optimiser variable: iterations, slots), `state.json` (epoch, step and caller extras such as
the data order). `EpochCheckpoint` adds the run's record so far: `record.json` (every epoch's logs, every step's
learning rate) and `snapshots/` (the snapshots collected so far).
The data order of an epoch is a pure function of `(seed, member, epoch)` (`ensemble.train.epoch_indices`), so
weights + optimiser state + epoch are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from ensemble.fused import FusedMLP, load_fused
from ensemble.snapshots import SnapshotCollector, Snapshots

RECORD_FILE = "record.json"
SNAPSHOT_DIR = "snapshots"


def save_checkpoint(
    directory: str | Path,
    model: FusedMLP,
    optimizer: keras.optimizers.Optimizer,
    epoch: int,
    *,
    write_extra: Callable[[Path], object] | None = None,
    **extra,
) -> Path:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact).

    Args:
        directory: target directory (replaced as a whole).
        model: the fused model.
        optimizer: its optimiser, built on `model.trainable_variables`.
        epoch: number of epochs completed.
        write_extra: called with the new checkpoint's (temporary) directory to add files of its own, so they are
            replaced together with the weights.
        **extra: JSON-serialisable values stored in `state.json`.
    """
    directory = Path(directory)
    recover_checkpoint(directory)
    tmp, old = _sibling(directory, "tmp"), _sibling(directory, "old")
    for leftover in (tmp, old):  # from a run killed while writing
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.keras")
    config = keras.optimizers.serialize(optimizer)
    (tmp / "optimizer.json").write_text(json.dumps(config))
    np.savez(tmp / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
    if write_extra is not None:
        write_extra(tmp)
    state = {"epoch": int(epoch), "step": int(optimizer.iterations), **extra}
    (tmp / "state.json").write_text(json.dumps(state))  # written last: marks the checkpoint complete
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def recover_checkpoint(directory: str | Path) -> None:
    """Finish a swap that a crash interrupted between its two renames (the new checkpoint wins if complete)."""
    directory = Path(directory)
    if directory.exists():
        return
    tmp, old = _sibling(directory, "tmp"), _sibling(directory, "old")
    if (tmp / "state.json").is_file():
        os.replace(tmp, directory)
    elif (old / "state.json").is_file():
        os.replace(old, directory)


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(f"{directory.name}.{suffix}")


def load_checkpoint(directory: str | Path) -> tuple[FusedMLP, keras.optimizers.Optimizer, dict]:
    """Load `(model, optimizer, state)`; the optimiser is rebuilt on the model's variables with its saved state."""
    directory = Path(directory)
    recover_checkpoint(directory)
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"No checkpoint in {directory}: state.json is missing.")
    model = load_fused(directory / "model.keras")
    optimizer = keras.optimizers.deserialize(json.loads((directory / "optimizer.json").read_text()))
    optimizer.build(model.trainable_variables)
    with np.load(directory / "optimizer.npz") as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise ValueError(
            f"Checkpoint {directory} holds {len(values)} optimizer variables; the rebuilt optimizer has "
            f"{len(optimizer.variables)}."
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        variable.assign(value)
    return model, optimizer, json.loads((directory / "state.json").read_text())


def has_checkpoint(directory: str | Path) -> bool:
    recover_checkpoint(directory)
    return (Path(directory) / "state.json").is_file()


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint after every epoch, so a killed run resumes from the last completed epoch and ends with
    the same record as an uninterrupted run.

    Besides weights and optimiser state, each checkpoint holds the record so far: every epoch's logs, the learning
    rate of every optimiser step (`fit`'s `on_steps_end`) and, with a `collector`, the snapshots collected so far.

    Args:
        directory: where `save_checkpoint` writes (overwritten each epoch).
        optimizer: the optimiser `fit` uses (a callback sees only the model).
        collector: a `SnapshotCollector` of the same run whose snapshots are saved (and restored) with the weights.
        **state: JSON values stored in every checkpoint's `state.json` (e.g. the data order, to check on resume).

    Attributes:
        epochs: every epoch's `(epoch, logs)`, per-member arrays as lists, resumed epochs included.
        steps: global step numbers `(S,)`; learning_rates: the learning rate each of those steps used `(S,)`.
    """

    def __init__(
        self,
        directory: str | Path,
        optimizer: keras.optimizers.Optimizer,
        collector: SnapshotCollector | None = None,
        **state,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.optimizer = optimizer
        self.collector = collector
        self.state = state
        self.epochs: list[tuple[int, dict]] = []
        self.steps: list[int] = []
        self.learning_rates: list[float] = []

    def resume(self) -> None:
        """Continue the record of the checkpoint in `directory` (call before `fit` resumes from it)."""
        record = read_record(self.directory)
        self.epochs, self.steps, self.learning_rates = (
            record["epochs"],
            record["steps"],
            record["learning_rates"],
        )
        if self.collector is not None and record["snapshots"] is not None:
            self.collector.snapshots, self.collector.cycle_ends = record["snapshots"], record["cycle_ends"]

    def on_steps_end(self, logs: dict) -> None:
        self.steps.extend(logs["steps"])
        self.learning_rates.extend(logs["learning_rates"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append((epoch, {key: plain(value) for key, value in (logs or {}).items()}))
        save_checkpoint(
            self.directory, self.model, self.optimizer, epoch + 1, write_extra=self.write_record, **self.state
        )

    def write_record(self, directory: Path) -> None:
        collector = self.collector
        write_record(
            directory,
            self.epochs,
            self.steps,
            self.learning_rates,
            snapshots=collector.snapshots if collector is not None else None,
            cycle_ends=collector.cycle_ends if collector is not None else (),
        )


def write_record(
    directory: str | Path,
    epochs: list[tuple[int, dict]],
    steps: list[int],
    learning_rates: list[float],
    snapshots: Snapshots | None = None,
    cycle_ends: Sequence[int] = (),
) -> None:
    """Write a run's record into a checkpoint directory: `record.json` and, if given, `snapshots/`.

    Args:
        epochs: every epoch's `(epoch, logs)` (arrays are stored as lists).
        steps: global step numbers `(S,)`; learning_rates: the learning rate each step used `(S,)`.
        snapshots: the snapshots collected so far; cycle_ends: every cycle end seen, skipped ones included.
    """
    directory = Path(directory)
    record = {
        "epochs": [(int(e), {k: plain(v) for k, v in logs.items()}) for e, logs in epochs],
        "steps": [int(s) for s in steps],
        "learning_rates": [float(lr) for lr in learning_rates],
        "cycle_ends": [int(s) for s in cycle_ends],
    }
    if snapshots is not None:
        snapshots.save(directory / SNAPSHOT_DIR)
    (directory / RECORD_FILE).write_text(json.dumps(record))


def read_record(directory: str | Path) -> dict:
    """What `write_record` wrote: `epochs`, `steps`, `learning_rates`, `cycle_ends` and `snapshots` (or None)."""
    directory = Path(directory)
    if not (directory / RECORD_FILE).is_file():
        raise FileNotFoundError(f"No training record in {directory}: {RECORD_FILE} is missing.")
    record = json.loads((directory / RECORD_FILE).read_text())
    record["epochs"] = [(int(epoch), logs) for epoch, logs in record["epochs"]]
    snapshot_dir = directory / SNAPSHOT_DIR
    record["snapshots"] = Snapshots.load(snapshot_dir) if snapshot_dir.is_dir() else None
    return record


def plain(value):
    """Arrays and NumPy scalars (also inside lists) as JSON-ready Python values; floats round-trip exactly."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
