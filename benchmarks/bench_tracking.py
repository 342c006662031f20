"""Tracking overhead: the train flow with MLflow tracking on vs the same flow with tracking off.

Target (issue): logging is batched (`log_batch`), so tracking costs <= 10 % of training wall time with 50 members.

- Tracking on (T_on): `flows.train.train_flow` (registry on) inside `prefect_test_harness`, against a fresh,
  pre-migrated MLflow SQLite file, once per log writer (`--writers`: `tasks.log_writers`, where the training task's
  live writes run: a thread or a child process). Every method of `tasks.tracking.Tracker` called in this process
  is timed (outermost call only) and attributed to the Prefect task or flow body it ran in; the writer's calls
  run beside training and are counted as CPU time (the child's) or not at all (the thread's).
- Tracking off (T_off): the same flow in the same harness with every `Tracker` method replaced by a stub that
  makes no MLflow call (run ids are made up; model logging and registration do nothing) and no log writer.

T is the flow run's Running -> Completed time as Prefect records it: the wall time of the call also holds Prefect
3.8's wait for its heartbeat thread, which sleeps in 1-second steps, so every flow call ends on the next whole
second of that thread (up to +1 s at random, the same with tracking on or off). T_on - T_off is the whole cost of
tracking on the flow's critical path: MLflow calls made by tasks, the wait for the writer at the end of training,
and what the writer's work takes from training (the GIL for the thread, a core for the child). It is reported with
and without model logging + registration, a cost per flow that does not grow with members.

Every variant runs once on a 2-member model first (imports, TensorFlow start-up, the Prefect client, MLflow's model
code), so no timed run pays one-off costs; off/on runs are interleaved (`--repeats`) and medians reported.
Test metrics of the runs are printed: they must match. TensorFlow runs with one intra-op thread, as `ensemble train`
does.

    .venv/bin/python benchmarks/bench_tracking.py               # 50 members, 10 epochs, batch 1: ~1 min, 2 cores
    .venv/bin/python benchmarks/bench_tracking.py --repeats 3   # 3 interleaved rounds, medians: ~3 min
    .venv/bin/python benchmarks/bench_tracking.py --epochs 30 --writers thread
    .venv/bin/python benchmarks/bench_tracking.py --quick       # 20 members, 5 epochs (one SGDR cycle): ~40 s
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import Future
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as `ensemble train` runs (flows/cli.py)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.client.schemas.sorting import TaskRunSort  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

import tasks.train  # noqa: E402
from flows.train import train_flow  # noqa: E402
from tasks.config import PipelineConfig, load_config  # noqa: E402
from tasks.log_writers import start_logging  # noqa: E402
from tasks.tracking import Tracker, TrackingSettings  # noqa: E402

TASKS = ("prepare-data", "log-data", "train-fused", "collect-snapshots", "evaluate", "register-model")
FLOW_BODY = "(flow body)"
WRITER = "(writer thread)"  # tasks.log_writers.LoggingThread: runs beside training
FLOW = "(flow run)"  # Running -> Completed, as Prefect records it
REGISTRATION = ("log_model", "register")  # once per flow: package the model, move the alias


# -- tracking off -----------------------------------------------------------------------------------------------
STUB_RETURNS = {  # what a Tracker method returns when tracking is off; every other method returns None
    "experiment_id": lambda self: "0",
    "start_run": lambda self, *args, **kwargs: f"off-{uuid.uuid4().hex}",
    "child_runs": lambda self, *args, **kwargs: {},
    "open_child_runs": lambda self, parent, kind, params: [f"off-{uuid.uuid4().hex}" for _ in params],
    "log_model": lambda self, *args, **kwargs: "models:/off",
    "register": lambda self, *args, **kwargs: {"name": "off", "version": "0", "alias": "off"},
    "run_url": lambda self, run_id: "",
}


class NoLogging:
    """`tasks.log_writers.start_logging` with tracking off: no thread, no child process; a call of a (stubbed)
    `Tracker` method answers at once, any other call (the learning-rate plot) is not made."""

    def __init__(self, settings):
        self.tracker = Tracker(settings)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        future.set_result(fn(self.tracker, *args, **kwargs) if fn in vars(Tracker).values() else None)
        return future

    def idle(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextlib.contextmanager
def tracking_off():
    """Every `Tracker` method (the constructor too) replaced by a stub that never calls MLflow, and no logging
    process."""

    def init(self, settings=None):
        self.settings = settings

    originals = {name: fn for name, fn in vars(Tracker).items() if inspect.isfunction(fn)}
    for name in originals:
        stub = STUB_RETURNS.get(name, lambda self, *args, **kwargs: None)
        setattr(Tracker, name, init if name == "__init__" else stub)
    tasks.train.start_logging = NoLogging
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(Tracker, name, fn)
        tasks.train.start_logging = start_logging


# -- tracking on ------------------------------------------------------------------------------------------------
class TrackerTimer:
    """Times every method of `tasks.tracking.Tracker` while installed, per method and per place it ran in.

    Tasks build their own `Tracker`, so the class itself is instrumented. Nested calls (`log_metrics` ->
    `log_metric_batch`) are counted in `calls` but timed once, in the outermost call.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)  # method -> s
        self.where_seconds: dict[str, float] = defaultdict(
            float
        )  # Prefect task / flow body / background -> s
        self.calls: Counter = Counter()
        self._local, self._lock = threading.local(), threading.Lock()

    @contextlib.contextmanager
    def installed(self):
        originals = {name: fn for name, fn in vars(Tracker).items() if inspect.isfunction(fn)}
        for name, fn in originals.items():
            setattr(Tracker, name, self._timed(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(Tracker, name, fn)

    def total(self) -> float:
        return sum(self.seconds.values())

    def _timed(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            self._local.depth = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.depth = depth
                elapsed = time.perf_counter() - start
                context = TaskRunContext.get()
                where = context.task.name if context else FLOW_BODY
                if threading.current_thread().name.startswith("mlflow-logging"):
                    where = WRITER
                with self._lock:
                    self.calls[name] += 1
                    if depth == 0:
                        self.seconds[name] += elapsed
                        self.where_seconds[where] += elapsed

        return timed


# -- one flow run -----------------------------------------------------------------------------------------------
def run_flow(config: PipelineConfig, settings: TrackingSettings, tracked: bool) -> dict:
    """One timed train flow. Returns its result plus `wall`, `tasks` (task name -> s) and, tracked, `timer`."""
    timer = TrackerTimer()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with timer.installed() if tracked else tracking_off():
        start = time.perf_counter()
        state = train_flow(config, settings, return_state=True)
        wall = time.perf_counter() - start
    after = resource.getrusage(
        resource.RUSAGE_CHILDREN
    )  # the logging process has exited (and been waited for)
    result = state.result()
    tasks = task_durations(str(state.state_details.flow_run_id))
    child_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {
        **result,
        "wall": wall,
        "tasks": tasks,
        "timer": timer if tracked else None,
        "child_cpu": child_cpu,
    }


def task_durations(flow_run_id: str) -> dict[str, float]:
    """Seconds (start -> end) of each task of a flow run, by task name, and of the flow run itself (`FLOW`)."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    durations: dict[str, float] = defaultdict(float)
    durations[FLOW] = (flow_run.end_time - flow_run.start_time).total_seconds()
    for run in runs:
        if run.start_time and run.end_time:
            name = next((t for t in TASKS if run.name.startswith(t)), run.name)
            durations[name] += (run.end_time - run.start_time).total_seconds()
    return durations


def logged_counts(db: Path, run_ids: list[str]) -> tuple[int, int]:
    """(metric points, params) stored for these runs."""
    marks = ",".join("?" * len(run_ids))
    with contextlib.closing(sqlite3.connect(db)) as connection:
        metrics = connection.execute(f"SELECT COUNT(*) FROM metrics WHERE run_uuid IN ({marks})", run_ids)
        params = connection.execute(f"SELECT COUNT(*) FROM params WHERE run_uuid IN ({marks})", run_ids)
        return metrics.fetchone()[0], params.fetchone()[0]


def optimiser_steps(result: dict) -> int:
    """Steps of a flow run's training, from the history next to its predictor (`run_dir/history.json`)."""
    history = Path(result["predictor_dir"]).parent / "history.json"
    return len(json.loads(history.read_text())["steps"])


# -- report -----------------------------------------------------------------------------------------------------
def configure(
    members: int, epochs: int, root: Path, cycle_length: int = 5, batch_size: int = 1
) -> PipelineConfig:
    return load_config(
        overrides={
            "model.members": members,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "snapshots.cycle_length": cycle_length,
            "output_dir": str(root),
        }
    )


def median(runs: list[dict], value) -> float:
    return statistics.median(value(run) for run in runs)


def report(
    members: int, epochs: int, offs: list[dict], ons: list[dict], db: Path, writer: str, batch_size: int
) -> dict[str, float]:
    t_off, t_on = median(offs, lambda r: r["tasks"][FLOW]), median(ons, lambda r: r["tasks"][FLOW])
    registration_s = median(ons, lambda r: sum(r["timer"].seconds[m] for m in REGISTRATION))
    train_off = median(offs, lambda r: r["tasks"]["train-fused"])
    train_on = median(ons, lambda r: r["tasks"]["train-fused"])
    off, on = offs[-1], ons[-1]
    timer = on["timer"]
    steps = optimiser_steps(on)
    many = f" (median of {len(offs)})" if len(offs) > 1 else ""
    print(
        f"\n== log_writer={writer}: {members} members, digits, 2 x 32 relu, batch {batch_size}, {epochs} epochs = {steps} "
        "optimiser steps"
    )
    each = (
        (lambda runs: "  runs: " + ", ".join(f"{r['tasks'][FLOW]:.2f}" for r in runs))
        if many
        else (lambda runs: "")
    )
    print(
        f"tracking off  T_off = {t_off:6.2f} s{many}  (train_flow, Tracker stubbed: no MLflow call){each(offs)}"
    )
    print(f"tracking on   T_on  = {t_on:6.2f} s{many}  (train_flow, MLflow SQLite, registry on){each(ons)}")
    wall_off, wall_on = median(offs, lambda r: r["wall"]), median(ons, lambda r: r["wall"])
    print(
        f"(T = the flow run's Running -> Completed time as Prefect records it; the call's wall time is "
        f"{wall_off:.2f} / {wall_on:.2f} s: Prefect 3.8 ends every flow call on the next 1-second tick of its "
        f"heartbeat thread)"
    )
    print(
        f"test accuracy off {off['metrics']['accuracy']:.4f} / on {on['metrics']['accuracy']:.4f}, "
        f"nll {off['metrics']['nll']:.4f} / {on['metrics']['nll']:.4f}"
    )

    print(f"\n{'where':<22}{'off s':>8}{'on s':>8}{'in Tracker s':>14}{'  (last pair)' if many else ''}")
    for name in (*TASKS, FLOW_BODY, WRITER):
        off_s, on_s = off["tasks"].get(name), on["tasks"].get(name)
        print(
            f"{name:<22}{'' if off_s is None else f'{off_s:.2f}':>8}{'' if on_s is None else f'{on_s:.2f}':>8}"
            f"{timer.where_seconds.get(name, 0.0):>14.2f}"
        )

    print(f"\n{'Tracker method':<22}{'calls':>7}{'outermost s':>13}{'  (last run)' if many else ''}")
    for name, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1]):
        print(f"{name:<22}{timer.calls[name]:>7}{seconds:>13.2f}")

    points, params = logged_counts(db, [on["run_id"], *on["member_run_ids"]])
    print(
        f"\nlogged: {points} metric points (lr {steps}, the rest per epoch / snapshot / test), {params} params, "
        f"{1 + members} runs"
        + (
            f"; the writer's child process (member runs, live curves, LR plot) used {on['child_cpu']:.2f} s of CPU, "
            "start-up included"
            if writer == "process"
            else f"; {timer.where_seconds[WRITER]:.2f} s of it on the writer thread, beside training"
        )
    )
    ratios = {
        "(T_on - T_off) / T_off": (t_on - t_off) / t_off,
        f"  without model logging + registration ({registration_s:.2f} s)": (t_on - registration_s - t_off)
        / t_off,
        "train-fused task, on vs off": (train_on - train_off) / train_off,
    }
    print()
    for label, ratio in ratios.items():
        print(f"{label:<60}{100 * ratio:>7.1f} %")
    overall = ratios["(T_on - T_off) / T_off"]
    print(
        f"target <= 10 % of training wall time: {'MET' if overall <= 0.10 else 'NOT MET'} (all of tracking)"
    )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 members, 5 epochs (one SGDR cycle)")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10, help="a multiple of the SGDR cycle (5 epochs)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="per member; the LR is logged at every step"
    )
    parser.add_argument("--repeats", type=int, default=1, help="off/on rounds, interleaved; medians reported")
    parser.add_argument(
        "--writers",
        default="thread,process",
        help="log writers to time with tracking on (tasks.log_writers), each against the same tracking-off runs",
    )
    args = parser.parse_args()
    writers = args.writers.split(",")
    members, epochs = (20, 5) if args.quick else (args.members, args.epochs)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables..."
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        root = Path(tmp)
        template = root / "migrated.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # migrate once, before any timing

        def store(name: str, writer: str = "thread") -> TrackingSettings:
            """A fresh copy of the migrated store per timed run: every run meets the same, empty store."""
            shutil.copy(template, root / f"{name}.db")
            return TrackingSettings(
                tracking_uri=f"sqlite:///{root / name}.db",
                artifact_location=str(root / "mlartifacts"),
                experiment_name="bench-tracking",
                registered_model_name="bench-tracking",
                log_writer=writer,
            )

        for variant in ("off", *writers):  # warm-up: one-off costs of every path
            warm = configure(2, 1, root / f"warm-{variant}", cycle_length=1)
            run_flow(
                warm, store(f"warm-{variant}", "thread" if variant == "off" else variant), variant != "off"
            )
        offs, ons = [], {writer: [] for writer in writers}
        for i in range(args.repeats):
            off = configure(members, epochs, root / f"off-{i}", batch_size=args.batch_size)
            offs.append(run_flow(off, store(f"off-{i}"), False))
            for writer in writers:
                name = f"on-{writer}-{i}"
                on = configure(members, epochs, root / name, batch_size=args.batch_size)
                ons[writer].append(run_flow(on, store(name, writer), True))
        for writer in writers:
            report(
                members,
                epochs,
                offs,
                ons[writer],
                root / f"on-{writer}-{args.repeats - 1}.db",
                writer,
                args.batch_size,
            )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
