"""Training checkpoints: a fused model, its optimiser's full state and the loop position, in one directory.

Layout: `model.keras` (architecture + weights), `optimizer.json` (Keras optimiser config, schedule included),
`optimizer.npz` (every optimiser variable: iterations, slots), `state.json` (epoch and caller extras).
The data order of an epoch is a pure function of `(seed, member, epoch)` (`ensemble.train.epoch_indices`), so
weights + optimiser state + epoch are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

from ensemble.fused import FusedMLP


def save_checkpoint(
    directory: str | Path, model: FusedMLP, optimizer: keras.optimizers.Optimizer, epoch: int, **extra
) -> Path:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact).

    Args:
        directory: target directory (replaced as a whole).
        model: the fused model.
        optimizer: its optimiser, built on `model.trainable_variables`.
        epoch: number of epochs completed.
        **extra: JSON-serialisable values stored in `state.json`.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save(tmp / "model.keras")
    config = keras.optimizers.serialize(optimizer)
    (tmp / "optimizer.json").write_text(json.dumps(config))
    np.savez(tmp / "optimizer.npz", *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
    (tmp / "state.json").write_text(json.dumps({"epoch": int(epoch), **extra}))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        for path in old.iterdir():
            path.unlink()
        old.rmdir()
    else:
        os.replace(tmp, directory)
    return directory


def load_checkpoint(directory: str | Path) -> tuple[FusedMLP, keras.optimizers.Optimizer, dict]:
    """Load `(model, optimizer, state)`; the optimiser is rebuilt on the model's variables with its saved state."""
    directory = Path(directory)
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"No checkpoint in {directory}: state.json is missing.")
    model = keras.saving.load_model(directory / "model.keras")
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
    return (Path(directory) / "state.json").is_file()


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint after every epoch, so a killed run resumes from the last completed epoch.

    Args:
        directory: where `save_checkpoint` writes (overwritten each epoch).
        optimizer: the optimiser `fit` uses (a callback sees only the model).
    """

    def __init__(self, directory: str | Path, optimizer: keras.optimizers.Optimizer):
        super().__init__()
        self.directory = Path(directory)
        self.optimizer = optimizer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        save_checkpoint(self.directory, self.model, self.optimizer, epoch + 1)
