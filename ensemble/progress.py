"""A one-line-per-epoch progress report over all members (Keras' progress bar shows one model's scalars)."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import numpy as np


class EpochProgress(keras.callbacks.Callback):
    """Prints `epoch 3/20  loss 0.412  val_acc 0.913 [0.884..0.934]  ensemble 0.951  2.1s` after every epoch.

    Args:
        epochs: the total, for the `3/20` display.
        print_fn: where lines go (`print`, a logger's `info`).
        prefix: put before every line (e.g. the growth round).
    """

    def __init__(self, epochs: int, print_fn: Callable[[str], None] = print, prefix: str = ""):
        super().__init__()
        self.epochs = int(epochs)
        self.print_fn = print_fn
        self.prefix = prefix
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.print_fn(
            format_epoch(epoch, self.epochs, logs or {}, time.perf_counter() - self._started, self.prefix)
        )


def format_epoch(epoch: int, epochs: int, logs: dict, seconds: float, prefix: str = "") -> str:
    parts = [f"{prefix}epoch {epoch + 1}/{epochs}", f"loss {logs.get('loss', float('nan')):.4f}"]
    for key, label in (("member_val_accuracy", "val_acc"), ("member_val_loss", "val_loss")):
        if key in logs:
            values = np.asarray(logs[key])
            parts.append(f"{label} {values.mean():.4f} [{values.min():.4f}..{values.max():.4f}]")
            break
    if "val_ensemble_accuracy" in logs:
        parts.append(f"ensemble {logs['val_ensemble_accuracy']:.4f}")
    parts.append(f"{seconds:.1f}s")
    return "  ".join(parts)


class EpochLogs(keras.callbacks.Callback):
    """Keeps every epoch's `(epoch, logs)` across several `fit` calls (Keras' `History` restarts with each)."""

    def __init__(self):
        super().__init__()
        self.epochs: list[tuple[int, dict]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append((epoch, dict(logs or {})))
