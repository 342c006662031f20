"""Training progress a person can follow: one line per epoch over all members, and in a terminal a live bar with an
ETA within the epoch and over the whole `fit` (a training run, or one growth round).

Where the bar goes: the rich console of the logger that `print_fn` writes to (Prefect's console handler, say), so
the epoch lines scroll above it; or, for `print_fn=print`, the terminal of stdout. Plain lines (no bar) when that
is not a terminal, under a Prefect worker or runner (`PREFECT__FLOW_RUN_ID` is set: its output goes to a log), or
with `ENSEMBLE_PROGRESS=lines`. In plain mode a long epoch also reports its progress and ETA every `every` seconds.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable

import keras
import numpy as np
from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.theme import Theme

PROGRESS_ENV = "ENSEMBLE_PROGRESS"
"""`auto` (the default: a bar in a terminal, else lines) or `lines` (never a bar)."""
MODES = ("auto", "lines")


def clock(seconds: float) -> str:
    """`0:07`, `2:05`, `1:02:03`: a duration as a clock."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_console(print_fn: Callable[[str], None]) -> Console | None:
    """The terminal console to draw a bar on for lines written by `print_fn`, or None for plain lines.

    Raises:
        ValueError: `$ENSEMBLE_PROGRESS` is not one of `MODES`.
    """
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(
            f"{PROGRESS_ENV} must be one of {', '.join(MODES)}. Received: {PROGRESS_ENV}={mode!r}"
        )
    if mode == "lines" or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return None
    console = Console() if print_fn is print else logger_console(print_fn)
    return console if console is not None and console.is_terminal else None


def logger_console(print_fn: Callable[[str], None]) -> Console | None:
    """The rich console of the handler that shows the records of `print_fn`'s logger (`logger.info` of a
    `logging.Logger` or `LoggerAdapter`), found the way a record travels: up the hierarchy while it propagates."""
    owner = getattr(print_fn, "__self__", None)
    logger = getattr(owner, "logger", owner)
    while isinstance(logger, logging.Logger):
        for handler in logger.handlers:
            console = getattr(handler, "console", None)
            if isinstance(console, Console) and handler.level <= logging.INFO:
                return console
        logger = logger.parent if logger.propagate else None
    return None


class EpochProgress(keras.callbacks.Callback):
    """Prints `epoch 3/20  loss 0.412  val_acc 0.913 [0.884..0.934]  ensemble 0.951  2.1s  ETA 0:37` after every
    epoch (ETA: of the rest of this `fit`, at the mean epoch time so far); in a terminal also a bar of the
    epoch's steps and one of the whole `fit`'s, each with its ETA (rich; see the module docstring).

    Args:
        epochs: the total, for the `3/20` display (0: `fit`'s `epochs`).
        print_fn: where lines go (`print`, a logger's `info`).
        prefix: put before every line (e.g. the growth round).
        console: draw the bar here; default: found from `print_fn` (`progress_console`), None in plain mode.
        every: in plain mode, the seconds between progress lines within an epoch.
    """

    def __init__(
        self,
        epochs: int,
        print_fn: Callable[[str], None] = print,
        prefix: str = "",
        console: Console | None = None,
        every: float = 10.0,
    ):
        super().__init__()
        if every <= 0:
            raise ValueError(f"Argument `every` must be > 0 seconds. Received: every={every}")
        self.epochs = int(epochs)
        self.print_fn = print_fn
        self.prefix = prefix
        self.console = console if console is not None else progress_console(print_fn)
        self.every = float(every)
        self._started = self._fit_started = self._last_line = time.perf_counter()
        self._fit_first_epoch: int | None = None
        self._epoch, self._done, self._bar, self._tasks = 0, 0, None, {}

    # -- what is shown --------------------------------------------------------------------------------------------

    def total_epochs(self) -> int:
        return self.epochs or int(self.params.get("epochs", 0))

    def fit_label(self) -> str:
        """The whole-`fit` bar's name: `growth round 2/4` for a round (`round`/`rounds` set), else `training`."""
        rounds = getattr(self, "rounds", None)
        return f"growth round {self.round}/{rounds}" if rounds else "training"

    def eta(self, epoch: int) -> float:
        """Seconds left in this `fit` after `epoch` ends, at the mean epoch time so far."""
        done = epoch + 1 - (self._fit_first_epoch or 0)
        left = int(self.params.get("epochs", epoch + 1)) - epoch - 1
        return (time.perf_counter() - self._fit_started) / max(done, 1) * left

    # -- hooks ----------------------------------------------------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self._started, self._last_line, self._epoch, self._done = now, now, epoch, 0
        if self._fit_first_epoch is None:  # this `fit`'s first epoch (a resumed run, a growth round: not 0)
            self._fit_first_epoch, self._fit_started = epoch, now
            self._start_bar(epoch)
        if self._bar is not None:
            description = f"{self.prefix}epoch {epoch + 1}/{self.total_epochs()}"
            self._bar.reset(self._tasks["epoch"], total=self.params.get("steps"), description=description)

    def on_steps_end(self, logs: dict) -> None:
        steps = len(logs.get("steps", ()))
        self._done += steps
        if self._bar is not None:
            self._bar.advance(self._tasks["epoch"], steps)
            self._bar.advance(self._tasks["fit"], steps)
            return
        now, total = time.perf_counter(), int(self.params.get("steps", 0))
        if now - self._last_line >= self.every and 0 < self._done < total:
            self._last_line = now
            rate = self._done / (now - self._started)  # steps per second in this epoch
            left_in_fit = (int(self.params.get("epochs", 0)) - self._epoch - 1) * total + total - self._done
            self.print_fn(
                f"{self.prefix}epoch {self._epoch + 1}/{self.total_epochs()}  step {self._done:,}/{total:,} "
                f"({100 * self._done / total:.0f} %)  epoch ETA {clock((total - self._done) / rate)}  "
                f"{self.fit_label()} ETA {clock(left_in_fit / rate)}"
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        self.print_fn(
            format_epoch(epoch, self.total_epochs(), logs or {}, seconds, self.prefix, eta=self.eta(epoch))
        )

    def on_train_end(self, logs: dict | None = None) -> None:
        self._stop_bar()
        self._fit_first_epoch = None  # the next `fit` (growth round) starts its own

    def _start_bar(self, epoch: int) -> None:
        if self.console is None:
            return
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,  # the epoch lines stay, the bar goes
        )
        steps = int(self.params.get("steps", 0))
        fit_steps = (int(self.params.get("epochs", epoch + 1)) - epoch) * steps
        self._tasks = {
            "fit": self._bar.add_task(self.fit_label(), total=fit_steps),
            "epoch": self._bar.add_task("epoch", total=steps),
        }
        # A `fit` that raised never ended its bar (no `on_train_end`): end it before this one (one live display
        # per console), and at exit at the latest, which gives the terminal its cursor back.
        if EpochProgress._shown is not None:
            EpochProgress._shown._stop_bar()
        EpochProgress._shown = self
        atexit.register(self._stop_bar)
        # A logger's console may have its own theme (Prefect's has no progress styles): add rich's defaults.
        self.console.push_theme(BAR_THEME)
        self._bar.start()

    _shown: EpochProgress | None = None  # the instance whose bar is on screen

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self.console.pop_theme()
            atexit.unregister(self._stop_bar)
        self._bar = None
        if EpochProgress._shown is self:
            EpochProgress._shown = None


BAR_THEME = Theme({k: v for k, v in DEFAULT_STYLES.items() if k.startswith(("bar.", "progress."))})


def format_epoch(
    epoch: int, epochs: int, logs: dict, seconds: float, prefix: str = "", eta: float | None = None
) -> str:
    parts = [f"{prefix}epoch {epoch + 1}/{epochs}", f"loss {logs.get('loss', float('nan')):.4f}"]
    for key, label in (("member_val_accuracy", "val_acc"), ("member_val_loss", "val_loss")):
        if key in logs:
            values = np.asarray(logs[key])
            parts.append(f"{label} {values.mean():.4f} [{values.min():.4f}..{values.max():.4f}]")
            break
    if "val_ensemble_accuracy" in logs:
        parts.append(f"ensemble {logs['val_ensemble_accuracy']:.4f}")
    parts.append(f"{seconds:.1f}s")
    if eta is not None and epoch + 1 < epochs:
        parts.append(f"ETA {clock(eta)}")
    return "  ".join(parts)
