"""Prefect's temporary API server, started at the CLI's edge so that its start-up overlaps with the imports.

Without a configured server (`PREFECT_API_URL`, in the environment or the Prefect profile) Prefect starts a
temporary one when the first flow runs: a process that loads Prefect's server (seconds), started only after this
process has imported TensorFlow, MLflow and the flows (seconds more), and the run waits for both in turn. The CLI
starts the same server (`prefect.server.api.server.SubprocessASGIServer`'s command and environment) before those
imports instead, and points this process at it (`PREFECT_API_URL` + `refresh_global_settings_context`, so child
processes find it too); importing Prefect's server code here is not needed any more either. It stops when the
process exits, as Prefect's does (after Prefect's workers have sent their logs). A configured server is used as it
is.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


class TemporaryServer:
    """A Prefect API server process on a free local port, for this process only (`start`, `wait_ready`, `stop`)."""

    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url

    @classmethod
    def start_if_needed(cls) -> TemporaryServer | None:
        """Starts the server unless a Prefect API is configured or Prefect's temporary servers are disabled
        (`PREFECT_SERVER_EPHEMERAL_ENABLED=false`, then Prefect's own error stands)."""
        started: list[TemporaryServer] = []
        # Registered before Prefect is first imported (it registers its exit handlers then), so that it runs after
        # them (last in, first out): they send the run's last logs and events while the server still answers;
        # stopped before them, they retried for seconds.
        atexit.register(lambda: [server.stop() for server in started])
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return None
        import prefect

        with (
            socket.socket() as sock
        ):  # a free port now; `wait_ready` notices if another process took it since
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        environment = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **settings.to_environment_variables(exclude_unset=True),
        }
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
        ]
        command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        server = cls(subprocess.Popen(command, env=environment), f"http://127.0.0.1:{port}/api")
        use_api(server.url)
        started.append(server)
        return server

    def wait_ready(self) -> None:
        """Returns once the server answers `/health`.

        Raises:
            RuntimeError: it exited, or did not answer within `$PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`.
        """
        deadline = time.monotonic() + float(os.environ.get(STARTUP_TIMEOUT_ENV, "20"))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Prefect's temporary server exited with code {self.process.returncode} before it answered on "
                    f"{self.url}; start one with `prefect server start` and set PREFECT_API_URL"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Prefect's temporary server did not answer on {self.url} within {STARTUP_TIMEOUT_ENV} seconds; raise "
            "it, or start a server with `prefect server start` and set PREFECT_API_URL"
        )

    def stop(self) -> None:
        """Terminates the server (5 s to shut down, then killed) and forgets its address."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.environ.get("PREFECT_API_URL") == self.url:
            use_api(None)


def use_api(url: str | None) -> None:
    """Points this process (and the processes it starts) at the temporary Prefect API `url`, or at none. Its
    UI address stays unset (the server serves no UI and ends with the command): no `View at` line, as with
    Prefect's own temporary server."""
    from prefect.context import refresh_global_settings_context

    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
        if os.environ.get("PREFECT_UI_URL") == "":
            del os.environ["PREFECT_UI_URL"]
    else:
        os.environ["PREFECT_API_URL"] = url
        os.environ.setdefault("PREFECT_UI_URL", "")
    refresh_global_settings_context()


def flow_run_settings(server: TemporaryServer | None) -> contextlib.AbstractContextManager:
    """Prefect's settings for a flow run of this process: on its own temporary server (`server`), no flow-run
    heartbeats; otherwise Prefect's settings as they are.

    A flow run's heartbeat thread (an event every `flows.heartbeat_frequency` seconds, from which a server can tell
    that a run crashed) is joined when the run ends, which waits out its current one-second sleep: up to 1 s after
    every flow run (measured ~1 s on a two-task flow). The temporary server ends with this process, so nothing would
    read them; a configured server (`PREFECT_API_URL`) keeps them.
    """
    if server is None:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def require_server() -> None:
    """Raise unless a Prefect server is configured (`PREFECT_API_URL`, in the environment or the profile): a schedule
    needs one to fire, and the temporary server of a serverless run stops with its process."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise RuntimeError(
            "Schedules need a Prefect server: start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (the temporary server of a serverless run stops "
            "with this process, and with it the schedule)"
        )
