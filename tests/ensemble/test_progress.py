"""`EpochProgress`: plain lines with an ETA where there is no terminal, a live bar (rich) on a terminal console."""

from __future__ import annotations

import io
import logging
import re

import keras
import numpy as np
import pytest
from rich.console import Console

from ensemble.model.fused import FusedMLP
from ensemble.training.progress import PROGRESS_ENV, EpochProgress, clock, logger_console, progress_console
from ensemble.training.train import TrainConfig, fit

ROWS, STEPS_PER_CALL = 64, 4  # batch 4: 16 steps per epoch, 4 compiled calls


def tiny_fit(progress: EpochProgress, epochs: int = 3) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = FusedMLP(2, 3, (4,), task="multiclass", num_classes=2, seed=0)
    config = TrainConfig(epochs=epochs, batch_size=4, steps_per_call=STEPS_PER_CALL, jit_compile=False)
    fit(
        model,
        x,
        y,
        optimizer=keras.optimizers.Adam(1e-2),
        config=config,
        validation_data=(x, y),
        callbacks=[progress],
    )


def test_plain_lines_give_one_line_per_epoch_with_the_eta_of_the_rest_of_the_fit():
    lines: list[str] = []
    tiny_fit(EpochProgress(3, lines.append), epochs=3)
    assert [line.split("  loss")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert [bool(re.search(r"  ETA \d+:\d\d$", line)) for line in lines] == [
        True,
        True,
        False,
    ]  # none after the last


def test_plain_lines_report_progress_within_a_long_epoch():
    """`every` seconds within an epoch: the step count, the epoch's ETA and the whole fit's (here: every call)."""
    lines: list[str] = []
    tiny_fit(EpochProgress(2, lines.append, every=1e-9), epochs=2)
    within = [line for line in lines if "step " in line]
    steps = ROWS // 4
    expected = [
        f"epoch {e}/2  step {s}/{steps} ({100 * s / steps:.0f} %)" for e in (1, 2) for s in (4, 8, 12)
    ]
    assert [line.split("  epoch ETA")[0] for line in within] == expected
    assert all(re.search(r"epoch ETA \d+:\d\d  training ETA \d+:\d\d$", line) for line in within)


def test_on_a_terminal_a_bar_counts_the_steps_of_the_epoch_and_of_the_fit_and_the_lines_stay():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    tiny_fit(EpochProgress(2, console.print, console=console), epochs=2)
    text = screen.getvalue()
    assert re.search(r"training .*\d+/32 steps  ETA", text)  # 2 epochs x 16 steps
    assert re.search(r"epoch 2/2 .*\d+/16 steps  ETA", text)
    # The cursor, hidden while the bar shows, is back; the bar is erased: only the lines stay.
    assert text.rindex("\x1b[?25h") > text.rindex("\x1b[?25l")
    assert text.endswith("\x1b[2K")
    assert len(re.findall(r"epoch \d/2  loss", text)) == 2  # the epoch lines, printed above the bar


def test_the_bar_goes_where_the_logger_shows_its_records_and_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    parent, child = logging.getLogger("progress-test"), logging.getLogger("progress-test.child")
    handler = logging.StreamHandler()
    handler.console = Console(file=io.StringIO(), force_terminal=True)
    parent.addHandler(handler)
    try:
        adapter = logging.LoggerAdapter(child, {})  # as Prefect's run logger
        assert logger_console(adapter.info) is handler.console
        assert progress_console(adapter.info) is handler.console
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0000")  # a worker's flow run: its output is a log
        assert progress_console(adapter.info) is None
        monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
        monkeypatch.setenv(PROGRESS_ENV, "lines")
        assert progress_console(adapter.info) is None
        monkeypatch.delenv(PROGRESS_ENV)
        handler.console = Console(file=io.StringIO())  # not a terminal
        assert progress_console(adapter.info) is None
        child.propagate = False  # the records never reach the handler
        assert logger_console(adapter.info) is None
    finally:
        parent.removeHandler(handler)
        child.propagate = True


def test_an_unknown_progress_mode_is_refused_naming_the_choices(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    with pytest.raises(
        ValueError, match=r"ENSEMBLE_PROGRESS must be one of auto, lines. Received: .*'fancy'"
    ):
        EpochProgress(3, print)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (7.4, "0:07"), (125, "2:05"), (3723, "1:02:03")])
def test_clock_formats_durations(seconds, text):
    assert clock(seconds) == text
