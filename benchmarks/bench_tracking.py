"""Tracking overhead: the train flow with MLflow tracking on vs the same work with tracking off.

Target (issue): logging is batched (`log_batch`), so tracking costs <= 10 % of training wall time with 50 members.

- Tracking off (T_off): the flow's computation, task by task, called directly: no Prefect, no MLflow. Prepare and
  save the data; build the same `FusedMLP` and optimiser (`tasks.train.build_model`, `build_optimizer`); `fit`
  with the train task's callbacks (per-epoch checkpoint, progress, snapshot collector); save model, snapshots and
  history; stack the snapshots into one group and score the snapshot ensembles on the validation split; score
  the test split (`tasks.evaluate.score`, per-member rows); save the predictor; predict the registration's input
  example.
- Tracking on (T_flow): `flows.train.train_flow` with the same config (registry on), inside
  `prefect_test_harness` (the Prefect API starts before timing), against a fresh, pre-migrated MLflow SQLite file.
  Every method of `tasks.tracking.Tracker`, the one owner of the flow's MLflow traffic, is timed (outermost call
  only) and attributed to the Prefect task it ran in: that is the MLflow cost. Prefect's task runs give each
  task's duration. T_flow - T_off bounds everything that is not training (MLflow + Prefect + noise).

Both paths run once on a 2-member model first (imports, TensorFlow start-up, the Prefect client, MLflow's model
code), so neither timed run pays one-off costs. Test metrics of both runs are printed: they must match.

    .venv/bin/python benchmarks/bench_tracking.py               # 50 members, 10 epochs, batch 1: ~1 min, 2 cores
    .venv/bin/python benchmarks/bench_tracking.py --repeats 3   # 3 interleaved off/on pairs, medians: ~2.5 min
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
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as `ensemble train` runs (flows/cli.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.client.schemas.sorting import TaskRunSort  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from ensemble.checkpoint import EpochCheckpoint  # noqa: E402
from ensemble.data import DataConfig, PreparedData, prepare_data  # noqa: E402
from ensemble.metrics import accuracy, combine  # noqa: E402
from ensemble.predictor import EnsemblePredictor, stack_weight_sets  # noqa: E402
from ensemble.progress import EpochProgress  # noqa: E402
from ensemble.snapshots import SnapshotCollector, Snapshots  # noqa: E402
from ensemble.train import fit, schedule_cycle_ends  # noqa: E402
from flows.train import train_flow  # noqa: E402
from tasks.config import PipelineConfig, load_config  # noqa: E402
from tasks.evaluate import member_rows, score  # noqa: E402
from tasks.registry import input_example  # noqa: E402
from tasks.tracking import Tracker, TrackingSettings  # noqa: E402
from tasks.train import build_model, build_optimizer, data_order, save_results, train_config  # noqa: E402

TRACKING_TASKS = ("log-data", "register-model")  # nothing but tracking
TASKS = (  # in flow order
    "prepare-data",
    "log-data",
    "train-fused",
    "collect-snapshots",
    "evaluate",
    "register-model",
)
METRIC_METHODS = ("log_metrics", "log_metrics_at_steps", "log_series", "log_metric_batch")
ONCE_PER_FLOW = ("log_series", "log_model", "register", "log_dataset", "log_table", "log_artifact", "run_url")
FLOW_BODY = "(flow body)"
BACKGROUND = "(background thread)"  # tasks.tracking.BackgroundLogging's worker: overlaps training


# -- tracking off -----------------------------------------------------------------------------------------------
def run_untracked(config: PipelineConfig, root: Path) -> dict[str, float]:
    """The train flow's computation (snapshots on, growth off, one shard), without Prefect or MLflow.

    Returns the test metrics (the same as the tracked flow's: same seeds, same code).
    """
    assert config.snapshots.enabled and not config.growth.enabled and config.train.members_per_shard is None
    model, train, snapshots, evaluation = config.model, config.train, config.snapshots, config.evaluation
    # prepare-data
    data_dir = root / "data"
    prepare_data(DataConfig(**config.data.model_dump())).save(data_dir)
    # train-fused (tasks.train.train_task without the Prefect logger)
    prepared = PreparedData.load(data_dir)
    steps_per_epoch = len(prepared.y_train) // train.batch_size
    fused = build_model(prepared, model, 0)
    opt = build_optimizer(config.optimizer, snapshots, steps_per_epoch)
    collector = SnapshotCollector(
        skip_first=snapshots.skip_first,
        keep_best=snapshots.keep_best,
        validation_data=(prepared.x_val, prepared.y_val),
        monitor="val_loss",
    )
    saver = EpochCheckpoint(
        root / "checkpoint", opt, collector, data_order=data_order(train, 0, model.members)
    )
    fit(
        fused,
        prepared.x_train,
        prepared.y_train,
        optimizer=opt,
        config=train_config(train),
        validation_data=(prepared.x_val, prepared.y_val),
        callbacks=[saver, EpochProgress(train.epochs, lambda line: None), collector],
    )
    trained = save_results(
        root,
        fused,
        collector.snapshots,
        saver.epochs,
        saver.steps,
        saver.learning_rates,
        schedule_cycle_ends(opt, int(opt.iterations)),
        0,
    )
    # collect-snapshots without logging: the snapshot ensembles' validation accuracy, the stacked group
    collected, prepared = Snapshots.load(trained["snapshot_dir"]), PreparedData.load(data_dir)
    keys = collected.keys()
    preds = collected.predict_members(prepared.x_val)  # (K, B, C)
    for cycle in collected.cycles:
        accuracy(combine(preds[[i for i, (_, c) in enumerate(keys) if c <= cycle]]), prepared.y_val)
    template = keras.saving.load_model(trained["model_path"])
    group = stack_weight_sets(template, [collected.weights[key] for key in keys], name="snapshot_ensemble")
    group.save(root / "snapshot_ensemble.keras")
    # evaluate without logging: test metrics of the ensemble and of each member, the saved predictor
    prepared = PreparedData.load(data_dir)
    groups = [keras.saving.load_model(root / "snapshot_ensemble.keras")]
    predictor = EnsemblePredictor(prepared.preprocessor, groups, combiner=evaluation.combiner)
    member_preds = np.concatenate([g.predict_members(prepared.x_test) for g in groups], axis=0)
    metrics = score(member_preds, prepared.y_test, prepared.task, evaluation)
    member_rows(groups[0].predict_members(prepared.x_test), prepared.y_test, prepared.task, evaluation.bins)
    predictor_dir = predictor.save(root / "predictor")
    # register-model without MLflow: the input example's prediction (the signature's output example)
    EnsemblePredictor.load(predictor_dir).predict(input_example(prepared))
    return metrics


# -- tracking on ------------------------------------------------------------------------------------------------
class TrackerTimer:
    """Times every method of `tasks.tracking.Tracker` while installed, per method and per Prefect task.

    Tasks build their own `Tracker`, so the class itself is instrumented. Nested calls (`log_metrics` ->
    `log_metric_batch`) are counted in `calls` but timed once, in the outermost call.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)  # method -> s
        self.task_seconds: dict[str, float] = defaultdict(float)  # Prefect task name -> s in Tracker
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
                    where = BACKGROUND
                with self._lock:
                    self.calls[name] += 1
                    if depth == 0:
                        self.seconds[name] += elapsed
                        self.task_seconds[where] += elapsed

        return timed


def task_durations(flow_run_id: str) -> dict[str, float]:
    """Seconds (start -> end) of each task of a flow run, by task name."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    durations: dict[str, float] = defaultdict(float)
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


def run_tracked(config: PipelineConfig, settings: TrackingSettings, timer: TrackerTimer) -> dict:
    """One timed train flow. Returns its result plus `wall`, `tasks` (task name -> s) and the Tracker times."""
    with timer.installed():
        start = time.perf_counter()
        result = train_flow(config, settings)
        wall = time.perf_counter() - start
    flow_run_id = Tracker(settings).client.get_run(result["run_id"]).data.tags["prefect.flow_run_id"]
    return {**result, "wall": wall, "tasks": task_durations(flow_run_id), "timer": timer}


# -- report -----------------------------------------------------------------------------------------------------
def configure(members: int, epochs: int, root: Path, cycle_length: int = 5) -> PipelineConfig:
    return load_config(
        overrides={
            "model.members": members,
            "train.epochs": epochs,
            "snapshots.cycle_length": cycle_length,
            "output_dir": str(root),
        }
    )


def report(
    members: int, epochs: int, offs: list[float], ons: list[dict], off_metrics: dict, db: Path
) -> None:
    t_off, t_flow = statistics.median(offs), statistics.median(r["wall"] for r in ons)
    last = ons[-1]
    timer, tasks = last["timer"], last["tasks"]
    steps = optimiser_steps(last)
    tracker_s = statistics.median(r["timer"].total() for r in ons)
    train_s = statistics.median(r["tasks"].get("train-fused", float("nan")) for r in ons)
    tracking_tasks_s = statistics.median(sum(r["tasks"].get(t, 0.0) for t in TRACKING_TASKS) for r in ons)
    points, params = logged_counts(db, [last["run_id"], *last["member_run_ids"]])
    metric_s = sum(timer.seconds[name] for name in METRIC_METHODS)
    runs = f" (median of {len(offs)})" if len(offs) > 1 else ""
    each_off = "  runs: " + ", ".join(f"{t:.1f}" for t in offs) if runs else ""
    each_on = "  runs: " + ", ".join(f"{r['wall']:.1f}" for r in ons) if runs else ""

    print(f"\n{members} members, digits, 2 x 32 relu, batch 1, {epochs} epochs = {steps} optimiser steps")
    print(
        f"tracking off  T_off  = {t_off:8.1f} s{runs}  (library calls only: no Prefect, no MLflow){each_off}"
    )
    print(f"tracking on   T_flow = {t_flow:8.1f} s{runs}  (train_flow: Prefect + MLflow SQLite){each_on}")
    print(
        f"  of which train-fused task {train_s:.1f} s; in Tracker (all MLflow calls) {tracker_s:.1f} s{runs}"
    )
    print(
        f"test accuracy off {off_metrics['accuracy']:.4f} / on {last['metrics']['accuracy']:.4f}, "
        f"nll {off_metrics['nll']:.4f} / {last['metrics']['nll']:.4f}"
    )

    print(f"\n{'Prefect task':<20}{'task s':>9}{'in Tracker s':>14}{'  (last run)' if runs else ''}")
    for name in (*TASKS, FLOW_BODY, BACKGROUND):
        task_s = tasks.get(name)
        print(
            f"{name:<20}{'' if task_s is None else f'{task_s:.2f}':>9}{timer.task_seconds.get(name, 0.0):>14.2f}"
        )

    print(f"\n{'Tracker method':<20}{'calls':>7}{'outermost s':>13}{'  (last run)' if runs else ''}")
    for name, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1]):
        print(f"{name:<20}{timer.calls[name]:>7}{seconds:>13.2f}")

    print(
        f"\nlogged: {points} metric points (lr {steps}, the rest per epoch / snapshot / test), {params} params, "
        f"{1 + members} runs; {points / metric_s:,.0f} metric points/s in the metric calls, "
        f"{points / tracker_s:,.0f}/s over all Tracker time"
    )
    per_member = sum(v for k, v in timer.seconds.items() if k not in ONCE_PER_FLOW) / members
    print(
        f"cost structure (last run): lr series {1e3 * timer.seconds['log_series'] / steps:.3f} ms per step "
        f"(train-fused: {1e3 * tasks['train-fused'] / steps:.3f} ms per step); {1e3 * per_member:.0f} ms per "
        f"member run (open, params, curves, snapshot + test metrics, close); model logging + registration "
        f"{timer.seconds['log_model'] + timer.seconds['register']:.2f} s"
    )
    ratios = {
        "Tracker (MLflow) time / T_off": tracker_s / t_off,
        "Tracker (MLflow) time / train-fused task": tracker_s / train_s,
        "tracking-only tasks / T_off": tracking_tasks_s / t_off,
        "(T_flow - T_off) / T_off  [MLflow + Prefect + noise]": (t_flow - t_off) / t_off,
    }
    print()
    for label, ratio in ratios.items():
        print(f"{label:<54}{100 * ratio:>7.1f} %")
    met = tracker_s / t_off <= 0.10
    bound = (t_flow - t_off) / t_off <= 0.10
    print(
        f"target <= 10 % of training wall time: {'MET' if met else 'NOT MET'} (MLflow time / T_off); "
        f"end-to-end upper bound {'also within' if bound else 'above'} 10 %"
    )


def optimiser_steps(result: dict) -> int:
    """Steps of a flow run's training, from the history next to its predictor (`run_dir/history.json`)."""
    history = Path(result["predictor_dir"]).parent / "history.json"
    return len(json.loads(history.read_text())["steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 members, 5 epochs (one SGDR cycle)")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10, help="a multiple of the SGDR cycle (5 epochs)")
    parser.add_argument("--repeats", type=int, default=1, help="off/on pairs, interleaved; medians reported")
    args = parser.parse_args()
    members, epochs = (20, 5) if args.quick else (args.members, args.epochs)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables..."
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        root = Path(tmp)
        db = root / "mlflow.db"
        MlflowClient(f"sqlite:///{db}").search_experiments()  # migrate the store before any timing
        settings = TrackingSettings(
            tracking_uri=f"sqlite:///{db}",
            artifact_location=str(root / "mlartifacts"),
            experiment_name="bench-tracking",
            registered_model_name="bench-tracking",
        )
        run_untracked(configure(2, 1, root / "warm-off", cycle_length=1), root / "warm-off")
        train_flow(configure(2, 1, root / "warm-on", cycle_length=1), settings)
        offs, ons, off_metrics = [], [], {}
        for i in range(args.repeats):
            start = time.perf_counter()
            off_metrics = run_untracked(configure(members, epochs, root / f"off-{i}"), root / f"off-{i}")
            offs.append(time.perf_counter() - start)
            ons.append(run_tracked(configure(members, epochs, root / f"on-{i}"), settings, TrackerTimer()))
        report(members, epochs, offs, ons, off_metrics, db)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
