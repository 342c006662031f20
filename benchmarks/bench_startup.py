"""Where a tiny `ensemble train` run's wall time goes: imports, Prefect's server, MLflow's store, training, registration.

Runs `ensemble train --members 2 --epochs 2` (digits) `--runs` times (default 2) as a user would, in a new temporary
directory (its own `./mlflow.db`, `./mlartifacts` and `PREFECT_HOME`), and breaks down the LAST run (warm: OS file
caches, Python bytecode, migrated databases). The phase edges are real timestamps, not estimates:

- the benchmark's clock at the process launch and exit;
- the CLI's own marks (`ENSEMBLE_TIMINGS=<file>`, `flows/cli.py`): config checked, TensorFlow/Prefect/MLflow
  imported, Prefect API ready, flow returned; a tree without them (an older checkout, `--repo`) falls back to the
  time of Prefect's `Starting temporary server` log line;
- Prefect's own records of the flow run and of each task run (start and end), read from its database.

```bash
.venv/bin/python benchmarks/bench_startup.py                   # temporary Prefect server, as `make run`
.venv/bin/python benchmarks/bench_startup.py --server          # a running `prefect server start` (PREFECT_API_URL)
.venv/bin/python benchmarks/bench_startup.py --repo /tmp/old   # another checkout of the project (before/after)
```

The machine may be shared: the load average before and after is printed, and the CPU time (user + system) of the
command and of the processes it started (Prefect's temporary server included), which a busy machine inflates far
less than wall time; compare shares and CPU time, not only seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["train", "--members", "2", "--epochs", "2"]
SERVER_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| INFO +\| prefect - Starting temporary server", re.M)


def utc(text: str) -> float:
    """A Prefect database timestamp (UTC, naive or not) as seconds since the epoch."""
    stamp = dt.datetime.fromisoformat(text)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def prefect_records(prefect_home: Path) -> tuple[dict, list[dict]]:
    """The latest flow run and its task runs (name, start, end) from Prefect's SQLite database."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        flow_id, *times = db.execute(
            "SELECT id, created, start_time, end_time FROM flow_run ORDER BY created DESC LIMIT 1"
        ).fetchone()
        tasks = db.execute(
            "SELECT name, start_time, end_time FROM task_run WHERE flow_run_id = ? ORDER BY start_time",
            (flow_id,),
        ).fetchall()
    flow = dict(zip(("created", "start", "end"), map(utc, times), strict=True))
    return flow, [{"name": n.rsplit("-", 1)[0], "start": utc(s), "end": utc(e)} for n, s, e in tasks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port with the benchmark's PREFECT_HOME; returns it and its API URL."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--port", str(port), "--no-ui"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    import urllib.request

    for _ in range(1200):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return server, url
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("prefect server start did not answer within 120 s")


def run_once(command: list[str], workdir: Path, env: dict, index: int) -> dict:
    """One `ensemble train` in a fresh process; its launch/exit times, CLI marks and output."""
    timings = workdir / f"timings-{index}.json"
    env = {**env, "ENSEMBLE_TIMINGS": str(timings)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "flows.cli", *command], cwd=workdir, env=env, capture_output=True, text=True
    )
    exited = time.time()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    if completed.returncode != 0:
        sys.exit(f"run {index} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    marks = json.loads(timings.read_text()) if timings.is_file() else {}
    return {
        "launch": launched,
        "exit": exited,
        "cpu": cpu,
        "marks": marks,
        "output": completed.stdout + completed.stderr,
    }


def phases(run: dict, flow: dict, tasks: list[dict]) -> list[tuple[str, float]]:
    """Consecutive phases of one run, from its launch to its exit: (name, seconds), adding up to the wall time."""
    marks, edges = run["marks"], [("launch", run["launch"])]
    if marks:
        edges += [
            ("python start, CLI, config check", marks["config"]),
            ("imports: TensorFlow, Prefect, MLflow, flow modules", marks["imports"]),
            ("waiting for Prefect's API (server start not hidden)", marks["prefect_api"]),
            ("flow run creation", flow["start"]),
        ]
    else:
        found = SERVER_LINE.search(run["output"])
        if found:  # the log line's local time of day, on the launch's date
            day = dt.datetime.fromtimestamp(run["launch"]).date()
            edges.append(
                (
                    "python start, CLI, imports",
                    dt.datetime.combine(day, dt.time.fromisoformat(found[1])).timestamp(),
                )
            )
        edges.append(("Prefect server start + flow run creation", flow["start"]))
    edges.append(("MLflow parent run: store, resume search, params", tasks[0]["start"]))
    rows = [(name, t - edges[i][1]) for i, (name, t) in enumerate(edges[1:])]
    for task in tasks:
        rows.append((f"task {task['name']}", task["end"] - task["start"]))
    gaps = sum(max(0.0, b["start"] - a["end"]) for a, b in zip(tasks, tasks[1:], strict=False))
    rows.append(("Prefect between tasks", gaps))
    rows.append(("flow end: close MLflow runs, final state", flow["end"] - tasks[-1]["end"]))
    if marks:
        rows.append(("flow end -> the CLI has the result", marks["flow_returned"] - flow["end"]))
        rows.append(("summary, server stop, interpreter exit", run["exit"] - marks["flow_returned"]))
    else:
        rows.append(("summary, server stop, interpreter exit", run["exit"] - flow["end"]))
    return rows


def report(command: list[str], run: dict, flow: dict, tasks: list[dict], loads: tuple[str, str]) -> None:
    wall = run["exit"] - run["launch"]
    rows = phases(run, flow, tasks)
    print(f"\n`ensemble {' '.join(command)}` (digits), last run: {wall:.2f} s wall")
    print(f"load average before {loads[0]}, after {loads[1]} ({os.cpu_count()} CPUs)")
    print(f"CPU time (user + system) of the command and the processes it started: {run['cpu']:.2f} s")
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name:<{width}}  {seconds:6.2f} s  {100 * seconds / wall:5.1f} %")
    accounted = sum(s for _, s in rows)
    print(f"  {'sum':<{width}}  {accounted:6.2f} s")
    marks = run["marks"]
    if "server_ready" in marks:  # started at the CLI's edge, in parallel with the imports
        print(
            f"Prefect's temporary server: started {marks['server_started'] - run['launch']:.2f} s after launch, "
            f"ready after {marks['server_ready'] - marks['server_started']:.2f} s (hidden behind the imports "
            f"but {marks['prefect_api'] - marks['imports']:.2f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs in one directory; the last one is reported")
    parser.add_argument("--server", action="store_true", help="start `prefect server start` and use it")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout of the project to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to the command"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    command = COMMAND + [arg for value in args.set for arg in ("--set", value)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ENSEMBLE_", "PREFECT_API"))}
    # A user's interpreter writes bytecode, so a second run finds the project's modules compiled: the same here.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(PREFECT_HOME=str(workdir / "prefect-home"), PYTHONPATH=str(args.repo.resolve()))
    server = None
    if args.server:
        server, env["PREFECT_API_URL"] = start_server(env)
    try:
        loads = [Path("/proc/loadavg").read_text().split()[0]]
        for index in range(args.runs):
            run = run_once(command, workdir, env, index)
            print(f"run {index + 1}: {run['exit'] - run['launch']:.2f} s wall, {run['cpu']:.2f} s CPU")
        loads.append(Path("/proc/loadavg").read_text().split()[0])
        flow, tasks = prefect_records(workdir / "prefect-home")
        report(command, run, flow, tasks, tuple(loads))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")


if __name__ == "__main__":
    main()
