"""Training checkpoints: a fused model, its optimiser's full state and the loop position, in one directory.

Layout: `model.keras` (architecture + weights), `optimizer.json` (Keras optimiser config, schedule included),
`optimizer.npz` (every optimiser variable: iterations, slots), `state.json` (epoch, step and caller extras such as
the data order). `EpochCheckpoint` adds the run's record so far: `record.jsonl` (`ensemble.training.record`: one row per
epoch with its logs, the learning rate of each of its steps and its cycle ends) and `snapshots/`
(`ensemble.training.snapshot_files`: one `cycle-0003.npz` per cycle, that cycle's member weights `(K, ...)` and scores).

A checkpoint is replaced as a whole and atomically, but an epoch rewrites only what changes: the weights, the
optimiser state, `state.json`. The record is appended to (one row) and a cycle's snapshots are written once; the
new checkpoint takes the earlier rows and snapshot files over from the previous one by hard link (a copy where the
file system has none), so what an epoch writes does not grow with the epoch number. The record file is shared with
the previous checkpoint, so `state.json` names its length (`record_bytes`): a row appended after it (a crash before
the swap) is not part of that checkpoint and is cut off when the run resumes.
The data order of an epoch is a pure function of `(seed, member, epoch)` (`ensemble.training.train.epoch_indices`), so
weights + optimiser state + epoch are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ensemble.model.member_model import MemberModel, load_member_model
from ensemble.snapshots.collector import SnapshotCollector, Snapshots
from ensemble.training.record import RECORD_FILE, RunRecord, RunRecorder
from ensemble.training.snapshot_files import (
    SNAPSHOT_DIR,
    Key,
    carry,
    note_all_snapshots,
    read_snapshots,
    write_snapshots,
)

LEGACY_RECORD_FILE = "record.json"  # the whole record rewritten each epoch (checkpoints of earlier versions)


def save_checkpoint(
    directory: str | Path,
    model: MemberModel,
    optimizer: keras.optimizers.Optimizer,
    epoch: int,
    *,
    write_extra: Callable[[Path], dict | None] | None = None,
    **extra,
) -> Path:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact).

    Args:
        directory: target directory (replaced as a whole).
        model: the fused model.
        optimizer: its optimiser, built on `model.trainable_variables`.
        epoch: number of epochs completed.
        write_extra: called with the new checkpoint's (temporary) directory to add files of its own, so they are
            replaced together with the weights; a dict it returns is added to `state.json`.
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
    written = write_extra(tmp) if write_extra is not None else None
    state = {"epoch": int(epoch), "step": int(optimizer.iterations), **extra, **(written or {})}
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


def load_checkpoint(directory: str | Path) -> tuple[MemberModel, keras.optimizers.Optimizer, dict]:
    """Load `(model, optimizer, state)`; the optimiser is rebuilt on the model's variables with its saved state."""
    directory = Path(directory)
    recover_checkpoint(directory)
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"No checkpoint in {directory}: state.json is missing.")
    model = load_member_model(directory / "model.keras")
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


class EpochCheckpoint(RunRecorder):
    """Saves a checkpoint after every epoch, so a killed run resumes from the last completed epoch and ends with
    the same record as an uninterrupted run.

    Besides weights and optimiser state, each checkpoint holds the run's record so far (`self.record`: every
    epoch's logs, the learning rate of every optimiser step, the cycle ends) and, with a `collector`, the snapshots
    collected so far. Each epoch appends one row to the record and writes only the cycles' snapshots not written
    before (see the module docstring).

    Args:
        directory: where `save_checkpoint` writes (replaced each epoch).
        optimizer: the optimiser `fit` uses (a callback sees only the model).
        collector: a `SnapshotCollector` of the same run whose snapshots are saved (and restored) with the weights.
        **state: JSON values stored in every checkpoint's `state.json` (e.g. the data order, to check on resume).

    Attributes:
        record: the `RunRecord` so far, resumed epochs included (what a caller hands on: `record.history()` is
            the run's `history.json`).
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
        self._on_disk = self._written = OnDisk()  # what the checkpoint in `directory` holds of the record
        self._keys: set[Key] = set()  # the collector's snapshot keys at the last epoch end
        self._cycle_steps: dict[int, int] = {}

    def resume(self) -> None:
        """Continue the record of the checkpoint in `directory` (call before `fit` resumes from it)."""
        saved = load_record(self.directory)
        self.record, self._on_disk = saved.record, saved.on_disk
        if self.collector is not None and saved.snapshots is not None:
            self.collector.snapshots, self.collector.cycle_ends = (
                saved.snapshots,
                list(saved.record.cycle_ends),
            )
            self._keys, self._cycle_steps = set(saved.snapshots.weights), dict(saved.snapshots.steps)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.record.end_epoch(epoch, logs or {}, **self.snapshot_events())
        save_checkpoint(
            self.directory, self.model, self.optimizer, epoch + 1, write_extra=self.write_record, **self.state
        )
        self._on_disk = self._written

    def snapshot_events(self) -> dict:
        """`{"snapshots": {"added": [[m, c], ...], "dropped": [...], "steps": [[c, step], ...]}}`: how the
        collector's snapshots changed since the last epoch end (nothing when they did not)."""
        snapshots = self.collector.snapshots if self.collector is not None else None
        if snapshots is None:
            return {}
        keys, steps = set(snapshots.weights), dict(snapshots.steps)
        events = {
            "added": sorted(keys - self._keys),
            "dropped": sorted(self._keys - keys),
            "steps": sorted((c, s) for c, s in steps.items() if self._cycle_steps.get(c) != s),
        }
        self._keys, self._cycle_steps = keys, steps
        events = {name: [list(item) for item in items] for name, items in events.items() if items}
        return {"snapshots": events} if events else {}

    def write_record(self, directory: Path) -> dict:
        """Into the new checkpoint `directory`: the record (the previous checkpoint's rows by hard link, then the
        rows it lacks) and the snapshots (files of the previous one by hard link, new cycles written)."""
        previous, on_disk = self.directory, self._on_disk
        if not (previous / RECORD_FILE).is_file() or on_disk.rows > len(self.record.epochs):
            on_disk = OnDisk()  # nothing to continue: write everything
        if on_disk.rows:
            carry(previous / RECORD_FILE, directory / RECORD_FILE)
            os.truncate(directory / RECORD_FILE, on_disk.record_bytes)  # rows past the previous checkpoint
        size = self.record.append_to(directory / RECORD_FILE, on_disk.rows)
        snapshots = self.collector.snapshots if self.collector is not None else None
        cycles = {} if snapshots is None else write_snapshots(directory, snapshots, previous, on_disk.cycles)
        self._written = OnDisk(len(self.record.epochs), size, cycles)
        return {"record_bytes": size}


@dataclass(frozen=True)
class OnDisk:
    """What a checkpoint holds of a run's record: its first `rows` rows in `record_bytes` bytes, and a snapshot
    file per cycle `{cycle: members it holds}`."""

    rows: int = 0
    record_bytes: int = 0
    cycles: dict[int, set[int]] | None = None

    def __post_init__(self):
        if self.cycles is None:
            object.__setattr__(self, "cycles", {})


@dataclass(frozen=True)
class SavedRecord:
    """A checkpoint's record (`load_record`): the `RunRecord`, its `Snapshots` (None without), what is on disk."""

    record: RunRecord
    snapshots: Snapshots | None
    on_disk: OnDisk


def load_record(directory: str | Path) -> SavedRecord:
    """The record and snapshots of the checkpoint in `directory`, up to the record length its `state.json` names.

    Raises:
        FileNotFoundError: the checkpoint holds no record.
    """
    directory = Path(directory)
    recover_checkpoint(directory)
    state_file = directory / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    path = directory / RECORD_FILE
    if path.is_file():
        length = state.get("record_bytes")
        if length is None:  # written without one: up to the last complete line
            data = path.read_bytes()
            length = data.rfind(b"\n") + 1
        record = RunRecord.read(path, length)
        snapshots, cycles = read_snapshots(directory / SNAPSHOT_DIR, record)
        return SavedRecord(record, snapshots, OnDisk(len(record.epochs), int(length), cycles))
    if (directory / LEGACY_RECORD_FILE).is_file():  # rewritten, not continued, by the next save
        legacy = json.loads((directory / LEGACY_RECORD_FILE).read_text())
        epochs = [(int(epoch), logs) for epoch, logs in legacy["epochs"]]
        record = RunRecord.from_flat(epochs, legacy["steps"], legacy["learning_rates"], legacy["cycle_ends"])
        snapshot_dir = directory / SNAPSHOT_DIR
        snapshots = None
        if (snapshot_dir / "snapshots.json").is_file():
            snapshots = Snapshots.load(snapshot_dir)
            note_all_snapshots(record, snapshots)
        return SavedRecord(record, snapshots, OnDisk())
    raise FileNotFoundError(f"No training record in {directory}: {RECORD_FILE} is missing.")


def write_record(
    directory: str | Path,
    epochs: list[tuple[int, dict]],
    steps: list[int],
    learning_rates: list[float],
    snapshots: Snapshots | None = None,
    cycle_ends: Sequence[int] = (),
) -> dict:
    """Write a whole run's record into a new checkpoint directory (e.g. merged shards): `record.jsonl` and, if
    given, `snapshots/` (all of them noted as taken in the last epoch's row). Returns `{"record_bytes": ...}` for
    `state.json` (`save_checkpoint` adds what its `write_extra` returns).

    Args:
        epochs: every epoch's `(epoch, logs)` (arrays are stored as lists).
        steps: global step numbers `(S,)`; learning_rates: the learning rate each step used `(S,)` (split over
            the epochs as `RunRecord.from_flat` does).
        snapshots: the snapshots collected so far; cycle_ends: every cycle end seen, skipped ones included.
    """
    directory = Path(directory)
    record = RunRecord.from_flat(epochs, steps, learning_rates, cycle_ends)
    if snapshots is not None:
        note_all_snapshots(record, snapshots)
        write_snapshots(directory, snapshots)
    return {"record_bytes": record.append_to(directory / RECORD_FILE)}


def read_record(directory: str | Path) -> dict:
    """A checkpoint's record as plain lists: `epochs`, `steps`, `learning_rates`, `cycle_ends`, `snapshots` (or
    None), and the `record` itself (`load_record`)."""
    saved = load_record(directory)
    record = saved.record
    return {
        "epochs": record.epochs,
        "steps": record.steps,
        "learning_rates": record.learning_rates,
        "cycle_ends": record.cycle_ends,
        "snapshots": saved.snapshots,
        "record": record,
    }
