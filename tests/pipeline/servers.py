"""Real servers for tests: free loopback ports, start-and-wait, and a stop that always reaps the process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

BIN = Path(sys.executable).parent


# What would point a child process at another store or Prefect API than the one its test sets up: a developer's
# shell, or an earlier test in this process (MLflow's `set_tracking_uri` exports MLFLOW_TRACKING_URI).
FOREIGN_SETTINGS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "ENSEMBLE_MLFLOW_CONFIG")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process run as a user runs it: this one's, less `FOREIGN_SETTINGS`, plus
    `extra`; TensorFlow's native notes muted and MLflow's telemetry off."""
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN_SETTINGS}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )
    return {**env, **extra}


def store_client(uri: str):
    """An `MlflowClient` of `uri` for both tracking and registry (else the registry is MLflow's process-wide
    default, which an earlier test may have pointed at its own store)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, uri)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], log: Path, **popen) -> subprocess.Popen:
    """Start `command` in its own process group (so `stop` reaps its children), its output going to `log` (a
    pipe that nobody reads while it runs would fill up and block it)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process's group (servers fork workers), wait, and kill whatever is left."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer (exit code {process.poll()}):\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running(command: list[str], health_url: str, log: Path, **popen) -> Iterator[subprocess.Popen]:
    """Start `command` in its own process group, wait for `health_url`, and stop it on exit, even on failure."""
    process = spawn(command, log, **popen)
    try:
        wait_healthy(health_url, process, log)
        yield process
    finally:
        stop(process)


def mlflow_server(
    backend_uri: str, artifacts: Path, log: Path
) -> tuple[str, contextlib.AbstractContextManager]:
    """`mlflow server` on a free loopback port, serving (proxying) artifacts from `artifacts`: `(url, context)`."""
    port = free_port()
    command = [
        *(str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri),
        *("--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1"),
    ]
    url = f"http://127.0.0.1:{port}"
    return url, running(command, f"{url}/health", log)


def prefect_api_session() -> requests.Session:
    """HTTP calls to a Prefect server that retry what Prefect's own client retries: 408, 429, 502 and 503, for every
    method (its SQLite database answers 503 "Service Unavailable" while the server's services hold it)."""
    retry = Retry(
        total=6,
        backoff_factor=0.5,
        status_forcelist=(408, 429, 502, 503),
        allowed_methods=None,
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def invoke(url: str, frame) -> requests.Response:
    """POST `frame` (a pandas DataFrame) to a served model's `/invocations` as MLflow's `dataframe_split`."""
    payload = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
    return requests.post(f"{url}/invocations", json=payload, timeout=60)
