"""The run record: what a training run did, epoch by epoch, in one format in memory and on disk.

One row per completed epoch: its logs (scalars, and per-member values `(N,)` as lists), the global step number and
learning rate of each of its optimiser steps `(S_e,)`, the cycle ends it reached, and the notes a writer adds (the
checkpoint's snapshot events). On disk a record is JSON Lines, one row per line, only ever appended to:

    {"epoch": 0, "logs": {"loss": 0.41, "member_val_loss": [0.39, 0.44], ...}, "steps": [[1, 64]],
     "learning_rates": [0.05, ...], "cycle_ends": [64]}

`steps` holds `[first, last]` runs of consecutive global steps (one run for an epoch of `ensemble.training.train.fit`).
`RunRecorder` (a callback of `fit`, which keeps one for its `History`) fills a record; `ensemble.training.checkpoint`'s
`EpochCheckpoint` appends each epoch's row to the checkpoint's `record.jsonl`; `RunRecord.read` reads it back.
Floats round-trip exactly (JSON holds their shortest repr).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

RECORD_FILE = "record.jsonl"


@dataclass
class RunRecord:
    """A run's record: every completed epoch's row, plus the steps (and cycle ends) of an epoch under way.

    Attributes:
        epochs: every completed epoch's `(epoch, logs)`; arrays stored as (nested) lists.
        steps: global step numbers of every optimiser step recorded `(S,)`.
        learning_rates: the learning rate each of those steps used `(S,)`.
        cycle_ends: global step counts at which a schedule cycle ended.
        notes: one dict per completed epoch: what a writer added to its row (e.g. snapshot events).
        bounds: per completed epoch, `(len(steps), len(cycle_ends))` at its end: where its row's steps stop.
    """

    epochs: list[tuple[int, dict]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    cycle_ends: list[int] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    bounds: list[tuple[int, int]] = field(default_factory=list)

    # -- recording ------------------------------------------------------------------------------------------------

    def add_steps(self, steps: Sequence[int], learning_rates: Sequence[float]) -> None:
        """Record optimiser steps `(S_c,)` and the learning rate each used `(S_c,)`."""
        if len(steps) != len(learning_rates):
            raise ValueError(
                f"Arguments `steps` and `learning_rates` must have one entry per step. "
                f"Received: {len(steps)} steps, {len(learning_rates)} learning rates"
            )
        self.steps.extend(int(s) for s in steps)
        self.learning_rates.extend(float(lr) for lr in learning_rates)

    def add_cycle_end(self, step: int) -> None:
        self.cycle_ends.append(int(step))

    def end_epoch(self, epoch: int, logs: dict, **notes) -> None:
        """Close epoch `epoch`: its row holds `logs` (arrays as lists), the steps and cycle ends recorded since the
        previous epoch ended, and `notes` (JSON values)."""
        self.epochs.append((int(epoch), {key: plain(value) for key, value in logs.items()}))
        self.notes.append(plain(notes))
        self.bounds.append((len(self.steps), len(self.cycle_ends)))

    # -- rows -----------------------------------------------------------------------------------------------------

    def row(self, index: int) -> dict:
        """Completed epoch number `index` (0 = the first recorded) as its JSON Lines row."""
        steps_from, ends_from = self.bounds[index - 1] if index > 0 else (0, 0)
        steps_to, ends_to = self.bounds[index]
        epoch, logs = self.epochs[index]
        return {
            "epoch": epoch,
            "logs": logs,
            "steps": step_runs(self.steps[steps_from:steps_to]),
            "learning_rates": self.learning_rates[steps_from:steps_to],
            "cycle_ends": self.cycle_ends[ends_from:ends_to],
            **self.notes[index],
        }

    def add_row(self, row: dict) -> None:
        """Append a row read back (`row`'s inverse)."""
        steps = [s for first, last in row["steps"] for s in range(first, last + 1)]
        self.add_steps(steps, row["learning_rates"])
        for step in row["cycle_ends"]:
            self.add_cycle_end(step)
        notes = {k: v for k, v in row.items() if k not in ROW_KEYS}
        self.end_epoch(row["epoch"], row["logs"], **notes)

    @classmethod
    def from_flat(
        cls,
        epochs: Sequence[tuple[int, dict]],
        steps: Sequence[int],
        learning_rates: Sequence[float],
        cycle_ends: Sequence[int] = (),
    ) -> RunRecord:
        """A record from per-epoch logs and whole-run step lists: the steps are split evenly over the epochs (as
        `fit` runs them: the same number each epoch); when they do not divide evenly, the last epoch gets them all.
        A cycle end goes to the epoch whose steps include it."""
        record, ends, e = cls(), list(cycle_ends), 0
        per_epoch = len(steps) // len(epochs) if epochs and len(steps) % len(epochs) == 0 else 0
        for i, (epoch, logs) in enumerate(epochs):
            last_epoch = i == len(epochs) - 1
            stop = len(steps) if last_epoch else per_epoch * (i + 1)
            record.add_steps(steps[len(record.steps) : stop], learning_rates[len(record.steps) : stop])
            last_step = record.steps[-1] if record.steps else 0
            while e < len(ends) and (ends[e] <= last_step or last_epoch):
                record.add_cycle_end(ends[e])
                e += 1
            record.end_epoch(epoch, logs)
        return record

    # -- files ----------------------------------------------------------------------------------------------------

    def append_to(self, path: str | Path, start: int = 0) -> int:
        """Append the rows of completed epochs `start, start + 1, ...` to the JSON Lines file `path` (created if
        missing); returns the file's length in bytes. Earlier lines are not touched."""
        lines = "".join(
            json.dumps(self.row(i), separators=(",", ":")) + "\n" for i in range(start, len(self.epochs))
        )
        with open(path, "a", encoding="utf-8") as file:
            file.write(lines)
            return file.tell()

    @classmethod
    def read(cls, path: str | Path, length: int | None = None) -> RunRecord:
        """The record in the JSON Lines file `path`, up to byte `length` (None: all of it). A last line without
        its newline (a write cut short by a crash) is left out."""
        with open(path, "rb") as file:
            data = file.read() if length is None else file.read(length)
        record = cls()
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete (or empty)
            record.add_row(json.loads(line))
        return record

    def history(self) -> dict:
        """The whole run as one JSON-ready dict (`history.json`): `epochs` (rows of `epoch` and its logs, unit
        gradients left out), `lr` and `steps` `(S,)`, `cycle_ends`."""
        rows = [
            {"epoch": e, **{k: v for k, v in logs.items() if k != "unit_gradients"}}
            for e, logs in self.epochs
        ]
        return {
            "epochs": rows,
            "lr": list(self.learning_rates),
            "steps": list(self.steps),
            "cycle_ends": list(self.cycle_ends),
        }


ROW_KEYS = ("epoch", "logs", "steps", "learning_rates", "cycle_ends")


class RunRecorder(keras.callbacks.Callback):
    """Keeps a `RunRecord` of every `fit` it is passed to (across several, e.g. growth rounds): each epoch's logs
    (`on_epoch_end`), each step's learning rate (`fit`'s `on_steps_end`) and each cycle end (`on_cycle_end`).

    Args:
        record: the record to continue (e.g. a resumed run's); default: a new one.
    """

    def __init__(self, record: RunRecord | None = None):
        super().__init__()
        self.record = record if record is not None else RunRecord()

    def on_steps_end(self, logs: dict) -> None:
        self.record.add_steps(logs["steps"], logs["learning_rates"])

    def on_cycle_end(self, cycle: int, logs: dict | None = None) -> None:
        self.record.add_cycle_end((logs or {})["step"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.record.end_epoch(epoch, logs or {})


def step_runs(steps: Sequence[int]) -> list[list[int]]:
    """`[first, last]` runs of consecutive steps: `[1, 2, 3, 7, 8] -> [[1, 3], [7, 8]]`."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return runs


def plain(value):
    """Arrays and NumPy scalars (also inside lists and dicts) as JSON-ready Python values; floats round-trip
    exactly."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return value
