"""Where the training task's MLflow writes run while it trains: a thread (`LoggingThread`) or a child process
(`LoggingProcess`), behind one interface; `start_logging` picks one.

Writing to MLflow is CPU work in Python (SQLAlchemy: ~0.09 ms per metric point and ~3 ms per `log_batch` request
on SQLite). Both writers take it off the training thread; what it then costs training depends on the machine:

- `LoggingThread` shares the interpreter: the writes run while training waits in compiled TensorFlow calls, but
  hold the GIL, which training needs at every call and epoch-end op. The store it uses is already open and warm.
- `LoggingProcess` has an interpreter of its own (training pays only for pickling what it queues, well under a
  millisecond per epoch) but needs a core of its own, and ~2.4 s of CPU to start (import MLflow, open the store).

Measured here (`benchmarks/bench_tracking.py`, 2 cores, 50 members, batch 1): TensorFlow's inter-op threads
keep ~1.5 cores busy during training, so the child's CPU competes with training and the thread costs less
(training task +57 % vs +82 % at 10 epochs, +39 % vs +42 % at 30); with a core to spare (TensorFlow held to one
core, 30 epochs, against the thread writer this one replaced) the process cost less (+20 % vs +29 %).
`start_logging` therefore takes the process when at least `PROCESS_MIN_CPUS` cores are available.

Both run each call as `fn(tracker, *args, **kwargs)` on a `Tracker(settings)` of their own, one at a time, in the
order submitted, and return a `concurrent.futures.Future` of its result:

    with start_logging(settings) as logging:
        runs = logging.submit(Tracker.open_child_runs, parent_run_id, "member", params)
        logging.submit(Tracker.log_metric_batches, {runs.result()[0]: [Metric(...)]})
    # leaving the block waits for every call and raises the first failure

For the process, `fn` and its arguments are pickled: a `Tracker` method or a module-level function of a module
that does not import TensorFlow (the child imports it to unpickle `fn`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

from tasks.tracking import Tracker, TrackingSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where `tasks` is importable from, for the child
PROCESS_MIN_CPUS = 4  # "auto" takes the process from this many available cores on


def start_logging(settings: TrackingSettings) -> LoggingThread | LoggingProcess:
    """The writer of `settings.log_writer`: "thread", "process", or "auto" (the process when at least
    `PROCESS_MIN_CPUS` cores are available to this process, else the thread)."""
    kind = settings.log_writer
    if kind == "auto":
        kind = "process" if available_cpus() >= PROCESS_MIN_CPUS else "thread"
    return LoggingProcess(settings) if kind == "process" else LoggingThread(settings)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask; `os.cpu_count()` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Writer:
    """What both writers share: futures of the calls submitted, `idle`, `flush` and the context manager."""

    def __init__(self):
        self._pending: list[Future] = []
        self._lock = threading.Lock()

    def idle(self) -> bool:
        """True when every call submitted so far has finished."""
        return all(future.done() for future in self._pending)

    def flush(self) -> None:
        """Wait for every queued call; raise the first failure (the later calls still ran)."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]  # waits for each one
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback_) -> None:
        try:
            if exc_type is None:
                self.flush()
            else:
                with contextlib.suppress(Exception):
                    self.flush()
        finally:
            self.close()


class LoggingThread(_Writer):
    """`Tracker` calls run on one worker thread of this process, in the order submitted.

    `submit` returns at once with a `Future` of the call's result; `flush()` waits for every call submitted so far
    and raises the first failure. As a context manager, leaving the block flushes (after an exception too: nothing
    queued is lost, and the block's own exception is the one that propagates) and stops the thread.

    Args:
        settings: the `TrackingSettings` of the worker's `Tracker` (MLflow reuses this process's open store).
    """

    def __init__(self, settings: TrackingSettings):
        super().__init__()
        self.tracker = Tracker(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-logging")

    def submit(self, fn: Callable[..., Any], /, *args, **kwargs) -> Future:
        """Queue `fn(tracker, *args, **kwargs)`; it runs after everything submitted before it."""
        with self._lock:
            future = self._executor.submit(fn, self.tracker, *args, **kwargs)
            self._pending.append(future)
        return future

    def close(self) -> None:
        """Let the thread finish its queue and stop. Does not raise failures."""
        self._executor.shutdown(wait=True)


class LoggingError(RuntimeError):
    """A call run by a `LoggingProcess` failed, or the child process is gone. The message holds the child's
    traceback (the exception itself may not be picklable)."""


class LoggingProcess(_Writer):
    """`Tracker` calls run in a child process, in the order submitted, while the caller (training) goes on.

    `submit` returns at once with a `concurrent.futures.Future` of the call's result; `flush()` waits for every call
    submitted so far and raises the first failure as a `LoggingError`. As a context manager, leaving the block
    flushes (after an exception too: nothing queued is lost, and the block's own exception is the one that
    propagates) and stops the child. The child ignores SIGINT, so Ctrl-C stops training, not the writes already
    queued. A child that dies fails every pending call and every later submit with a `LoggingError`.

    Args:
        settings: the `TrackingSettings` of the child's `Tracker`.
        stop_timeout_s: how long closing waits for the child to finish its queue before killing it (seconds).
    """

    def __init__(self, settings: TrackingSettings, stop_timeout_s: float = 120.0):
        super().__init__()
        if stop_timeout_s <= 0:
            raise ValueError(
                f"Argument `stop_timeout_s` must be > 0. Received: stop_timeout_s={stop_timeout_s}"
            )
        self.stop_timeout_s = float(stop_timeout_s)
        ours, theirs = Pipe(duplex=True)
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tasks.log_writers", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches training, not the writes
        )
        theirs.close()
        self._connection: Connection = ours
        self._connection.send(settings)
        self._futures: dict[int, Future] = {}  # sent, not answered yet; registered before their call is sent
        self._ids = itertools.count()
        self._gone = False  # set by the reader once the child has closed its end
        self._reader = threading.Thread(target=self._read_replies, name="mlflow-logging-replies", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    def submit(self, fn: Callable[..., Any], /, *args, **kwargs) -> Future:
        """Queue `fn(tracker, *args, **kwargs)` on the child; it runs after everything submitted before it.

        Raises:
            pickle.PicklingError (or TypeError/AttributeError): `fn` or an argument cannot be pickled.
            LoggingError: the child process is gone.
        """
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)  # fails here, not there
        future: Future = Future()
        with self._lock:
            if self._gone:
                raise LoggingError(f"The MLflow logging process is gone ({self._exit_status()}).")
            call_id = next(self._ids)
            self._futures[call_id] = future
            self._pending.append(future)
            try:
                self._connection.send_bytes(
                    pickle.dumps((call_id, payload), protocol=pickle.HIGHEST_PROTOCOL)
                )
            except (OSError, ValueError) as error:
                self._futures.pop(call_id, None)
                self._pending.remove(future)
                raise LoggingError(f"The MLflow logging process is gone ({self._exit_status()}).") from error
        return future

    def close(self) -> None:
        """Let the child finish its queue and exit (killed after `stop_timeout_s`). Does not raise failures."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._connection.send_bytes(pickle.dumps(None))
        try:
            self._process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join()
        self._connection.close()

    def _read_replies(self) -> None:
        """Reader thread: completes each call's future; when the child is gone, fails the ones left."""
        while True:
            try:
                call_id, result, error = self._connection.recv()
            except (EOFError, OSError):
                break
            future = self._futures.pop(call_id)
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(LoggingError(error))
        with self._lock:
            self._gone = True
            left, self._futures = list(self._futures.values()), {}
        for future in left:
            future.set_exception(LoggingError(f"The MLflow logging process is gone ({self._exit_status()})."))

    def _exit_status(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1.0)  # a child that closed its end is exiting: let it be reaped
        code = self._process.poll()
        return "still running" if code is None else f"exit code {code}"


def serve(connection: Connection) -> None:
    """The child's loop: settings first, then `(call_id, pickled (fn, args, kwargs))` until `None` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops training; the queued writes still land
    tracker = Tracker(connection.recv())
    while True:
        try:
            message = pickle.loads(connection.recv_bytes())
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        call_id, payload = message
        try:
            fn, args, kwargs = pickle.loads(payload)
            reply = (call_id, fn(tracker, *args, **kwargs), None)
        except BaseException:  # noqa: BLE001 - every failure goes back to the caller
            reply = (call_id, None, traceback.format_exc())
        try:
            connection.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            connection.send(
                (call_id, None, f"The result of {fn!r} cannot be pickled:\n{traceback.format_exc()}")
            )


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
