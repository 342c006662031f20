"""Fault injection for tests: a crash or a pause right after an epoch's checkpoint, switched on by environment
variables that `train_task` reads (`fault_callbacks`). Never set them outside tests."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import keras

FAULT_AFTER_EPOCH_ENV = "ENSEMBLE_FAULT_AFTER_EPOCH"
PAUSE_AFTER_EPOCH_ENV = "ENSEMBLE_PAUSE_AFTER_EPOCH"


class InjectedFault(RuntimeError):
    """Raised by `FaultAfterEpoch`: a simulated crash."""


class FaultAfterEpoch(keras.callbacks.Callback):
    """Testing hook: raises right after the checkpoint of epoch `after` (count of completed epochs) is written.

    `train_task` adds it when `$ENSEMBLE_FAULT_AFTER_EPOCH` holds a number, to exercise the crash -> retry ->
    resume path with real Prefect retries. It fires once per run: the retried attempt resumes after that epoch.
    Never set the variable outside tests.
    """

    def __init__(self, after: int):
        super().__init__()
        self.after = int(after)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            raise InjectedFault(
                f"{FAULT_AFTER_EPOCH_ENV}={self.after}: simulated crash after epoch {self.after}"
            )


class PauseAfterEpoch(keras.callbacks.Callback):
    """Testing hook: right after the checkpoint of epoch `after` (count of completed epochs), the training process
    waits (up to `seconds`), so a test can kill it with SIGKILL at a known point however fast training is.

    `train_task` adds it when `$ENSEMBLE_PAUSE_AFTER_EPOCH` holds a number. Never set it outside tests.
    """

    def __init__(self, after: int, seconds: float = 600):
        super().__init__()
        self.after, self.seconds = int(after), float(seconds)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.after:
            time.sleep(self.seconds)


def fault_callbacks(environ: Mapping[str, str] = os.environ) -> list[keras.callbacks.Callback]:
    """The testing hooks the environment asks for (none outside tests); place them right after the checkpoint."""
    fault, pause = environ.get(FAULT_AFTER_EPOCH_ENV), environ.get(PAUSE_AFTER_EPOCH_ENV)
    return [
        *([FaultAfterEpoch(int(fault))] if fault else []),
        *([PauseAfterEpoch(int(pause))] if pause else []),
    ]
