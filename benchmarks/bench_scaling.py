"""Scale-out: sharded training on a local Dask cluster, and MLflow tracking-server throughput with concurrent flows.

1. Sharding. The same N-member train flow (default 200 members, digits, 2 x 32 relu, batch 1, 2 SGDR cycles) as
   one training task vs `--shards` shards on a local Dask cluster of as many workers (`runner.kind=dask`). Printed:
   flow wall time, training wall time (first training task start -> merge end, from Prefect's task runs), their
   ratios, test metrics, and per member the largest weight difference between merged and one-shard ensemble.
   On 2 shared cores expect little speed-up: the point is that it runs and merges correctly.
2. Tracking throughput. The train flow's MLflow traffic (a parent run, one run per member with params, per-epoch
   member and parent metrics, the per-step learning rate, all through `tasks.tracking.Tracker`) from 1 flow and
   from 4 concurrent flows, against `mlflow server` backed by PostgreSQL (a fresh database, dropped after), and
   for reference against one SQLite file without a server. Printed: metrics/s and the 4-vs-1 ratio.

PostgreSQL: `$ENSEMBLE_TEST_POSTGRES_URI` (default `postgresql://postgres@127.0.0.1:5432/postgres`); part 2 is
skipped when none answers.

    .venv/bin/python benchmarks/bench_scaling.py            # ~5 min on 2 busy cores
    .venv/bin/python benchmarks/bench_scaling.py --quick    # ~2 min: 40 members, 1 cycle, smaller logging load
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault(
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"
)  # no "View run at" line per member run
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.utils.time import get_current_time_millis  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import TaskRunSort  # noqa: E402

from flows.train import train_flow  # noqa: E402
from tasks.config import load_config  # noqa: E402
from tasks.live_logging import MEMBER_METRICS, PARENT_METRICS  # noqa: E402
from tasks.tracking import Tracker, TrackingSettings  # noqa: E402

POSTGRES_URI_ENV = "ENSEMBLE_TEST_POSTGRES_URI"
DEFAULT_POSTGRES_URI = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- 1. sharding ------------------------------------------------------------------------------------------------
def training_span(flow_run_id: str) -> float:
    """Seconds from the first training task's start to the end of the last training/merge task of a flow run
    (shards train in its `train-shards` subflow)."""
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *(r.id for r in subflows)])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    train = [r for r in runs if r.name.startswith(("train-fused", "train-shard", "merge-shards"))]
    return (max(r.end_time for r in train) - min(r.start_time for r in train)).total_seconds()


def sharding(root: Path, members: int, shards: int, epochs: int, data: str) -> None:
    common = {
        "data.source": data,
        "model.members": members,
        "model.hidden_units": [32, 32],
        "train.epochs": epochs,
        "train.batch_size": 1,
        "snapshots.cycle_length": 1,
        "registry.enabled": False,
    }
    settings = TrackingSettings(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "mlartifacts"),
        experiment_name="bench-scaling",
    )
    variants = {
        "1 shard": {},
        f"{shards} shards, Dask": {
            "train.members_per_shard": -(-members // shards),
            "runner.kind": "dask",
            "runner.workers": shards,
            "runner.processes": False,
        },
    }
    train_flow(
        load_config(overrides={**common, "output_dir": str(root / "warm"), "model.members": 2}), settings
    )
    rows = {}
    for name, extra in variants.items():
        config = load_config(overrides={**common, **extra, "output_dir": str(root / name.replace(" ", "-"))})
        start = time.perf_counter()
        result = train_flow(config, settings)
        wall = time.perf_counter() - start
        flow_run_id = Tracker(settings).client.get_run(result["run_id"]).data.tags["prefect.flow_run_id"]
        model_path = Path(config.output_dir).resolve() / "runs" / result["run_id"] / "model.keras"
        rows[name] = (wall, training_span(flow_run_id), keras.saving.load_model(model_path), result)
    (one_wall, one_train, one_model, _), (many_wall, many_train, many_model, _) = rows.values()
    pairs = list(zip(one_model.get_weights(), many_model.get_weights(), strict=True))
    per_member = np.max([np.abs(a - b).reshape(len(a), -1).max(axis=1) for a, b in pairs], axis=0)  # (N,)
    print(f"\n1. Sharding: {members} members, {data}, batch 1, {epochs} epoch(s), 2 x 32 relu")
    print(f"{'variant':<22}{'flow s':>9}{'training s':>12}{'test acc':>10}{'test nll':>10}")
    for name, (wall, train, _, result) in rows.items():
        metrics = result["metrics"]
        print(f"{name:<22}{wall:>9.1f}{train:>12.1f}{metrics['accuracy']:>10.4f}{metrics['nll']:>10.4f}")
    print(
        f"ratio (1 shard / {shards} shards): flow {one_wall / many_wall:.2f}x, training {one_train / many_train:.2f}x"
    )
    # Members are bit-identical except where an optimiser variable's slice ends a shard's array off the SIMD width:
    # the fused Adam kernel updates that tail with scalar code (other rounding), which Adam at a high learning rate
    # amplifies over thousands of steps. Shards and N that are multiples of 16 merge bit-identically.
    same = int((per_member == 0).sum())
    print(
        f"merged vs one-shard: {same}/{members} members bit-identical, the others differ by up to "
        f"{per_member.max():.1e} (SIMD-tail rounding in the optimiser kernel, amplified over the run)"
    )


# -- 2. tracking throughput -------------------------------------------------------------------------------------
def flow_traffic(settings: TrackingSettings, members: int, epochs: int, steps: int) -> int:
    """The MLflow calls of one train flow (parent + member runs, epoch curves, per-step LR); returns #metrics."""
    tracker = Tracker(settings)
    parent = tracker.start_run("bench-parent", tags={"kind": "ensemble"})
    tracker.log_params(parent, {"model": {"members": members, "hidden_units": [32, 32]}})
    now, count = get_current_time_millis(), 0
    for n in range(members):
        run = tracker.start_run(f"member-{n}", tags={"kind": "member"}, parent_run_id=parent)
        tracker.log_params(run, {"member": n, "seed": n, "width": 32})
        batch = [
            Metric(key, 1.0 / (e + 1), now, e)
            for e in range(epochs)
            for key in MEMBER_METRICS.values()  # the names the train flow logs per member
        ]
        tracker.log_metric_batch(run, batch)
        tracker.finish_run(run)
        count += len(batch)
    parent_batch = [Metric(k, 0.5, now, e) for e in range(epochs) for k in PARENT_METRICS.values()]
    tracker.log_metric_batch(parent, parent_batch)
    tracker.log_series(parent, "schedule/lr", np.linspace(0.01, 0.0001, steps), range(1, steps + 1))
    tracker.finish_run(parent)
    return count + len(parent_batch) + steps


def throughput(
    settings: TrackingSettings, flows: int, members: int, epochs: int, steps: int
) -> tuple[float, str]:
    Tracker(settings).experiment_id()  # created once, not raced for
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(flows) as pool:
            counts = list(pool.map(lambda _: flow_traffic(settings, members, epochs, steps), range(flows)))
    except Exception as error:  # e.g. SQLite's "database is locked"
        return float("nan"), f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    return sum(counts) / (time.perf_counter() - start), ""


def start_mlflow_server(database_uri: str, root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database_uri]
    command += [
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--workers", "2"]
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}")


def tracking(root: Path, members: int, epochs: int, steps: int) -> None:
    print(
        f"\n2. Tracking throughput: per flow 1 parent + {members} member runs, {epochs} epochs, {steps} LR steps"
    )
    print(f"{'store':<34}{'1 flow m/s':>12}{'4 flows m/s':>13}{'ratio':>8}  note")
    sqlite = TrackingSettings(
        tracking_uri=f"sqlite:///{root / 'bench.db'}", artifact_location=str(root / "art")
    )
    report("SQLite file, no server", sqlite, members, epochs, steps)
    try:
        import psycopg
    except ImportError:
        print("PostgreSQL: skipped (pip install 'fused-ensembles[postgres]')")
        return
    admin_uri = os.environ.get(POSTGRES_URI_ENV, DEFAULT_POSTGRES_URI)
    try:
        admin = psycopg.connect(admin_uri, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        print(f"PostgreSQL: skipped, none at {admin_uri} ({str(error).strip()[:80]}); set {POSTGRES_URI_ENV}")
        return
    name = f"ensemble_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    server = None
    try:
        server, url = start_mlflow_server(
            urlsplit(admin_uri)._replace(scheme="postgresql+psycopg", path=f"/{name}").geturl(), root
        )
        settings = TrackingSettings(tracking_uri=url, artifact_location=None, experiment_name="bench")
        report("mlflow server + PostgreSQL", settings, members, epochs, steps)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def report(label: str, settings: TrackingSettings, members: int, epochs: int, steps: int) -> None:
    throughput(settings, 2, 2, 2, 10)  # warm-up: the server's first requests initialise its store
    one, note_one = throughput(settings, 1, members, epochs, steps)
    four, note_four = throughput(settings, 4, members, epochs, steps)
    print(f"{label:<34}{one:>12.0f}{four:>13.0f}{four / one:>7.2f}x  {note_one or note_four}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 members, 1 epoch, smaller logging load")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--skip-sharding", action="store_true")
    parser.add_argument("--skip-tracking", action="store_true")
    args = parser.parse_args()
    members, epochs = (40, 1) if args.quick else (args.members, args.epochs)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_sharding:
            sharding(Path(tmp), members, args.shards, epochs, args.data)
        if not args.skip_tracking:
            tracking(Path(tmp), *((20, 10, 1000) if args.quick else (50, 20, 5000)))


if __name__ == "__main__":
    main()
