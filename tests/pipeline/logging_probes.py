"""Calls for the log writers' tests (`tasks.log_writers`). The child imports this module to run them, so it imports nothing heavy."""

from __future__ import annotations

import os
import threading
import time


def record(tracker, value):
    """(the writer's pid, `value`, the writer's thread, its tracker's tracking URI)."""
    return os.getpid(), value, threading.get_ident(), tracker.settings.tracking_uri


def fail(tracker, message: str):
    raise RuntimeError(message)


def sleep_then_record(tracker, seconds: float, value):
    time.sleep(seconds)
    return record(tracker, value)
