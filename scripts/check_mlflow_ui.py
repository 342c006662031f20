"""Check the MLflow UI in a real browser: the run list shows the runs' names, a run's model-metrics page shows the
grouped metric sections.

Starts `mlflow server` on the store and a headless Chromium (the Debian package: `make chromium`), drives Chromium
over its DevTools protocol (a websocket on loopback; nothing else is reached) and reads the rendered pages' text.
Both processes are stopped on exit, also on SIGTERM or Ctrl-C.

    .venv/bin/python scripts/check_mlflow_ui.py --tracking-uri sqlite:///mlflow.db --artifacts ./mlartifacts
    .venv/bin/python scripts/check_mlflow_ui.py --train          # trains a tiny ensemble into a temporary store

Checks, for the newest `kind=ensemble` run of the experiment (`--experiment`, default mlflow.yaml's):
- the experiment's run list (`#/experiments/<id>/runs`) shows the run's name and its members' names once expanded
  (they are nested under it), and no GenAI traces page;
- the run's model-metrics page (`#/experiments/<id>/runs/<run id>/model-metrics`) shows a section per metric group
  the run has (`train`, `val`, `test`, `schedule`, `snapshot`, ...).
Exit status 0 when every check passes, 1 (one line per failed check) otherwise; `--screenshots DIR` keeps PNGs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
UI_WORKFLOW = "workflowType=machine_learning"  # as `tasks.tracking.UI_WORKFLOW`
REQUIRED_GROUPS = ("schedule", "test", "train", "val")  # every train run has them


def find_chromium() -> str | None:
    """The Chromium executable on the PATH (Debian's `chromium`), or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def process(command: list[str], log: Path, **popen) -> Iterator[subprocess.Popen]:
    """`command` in its own process group, its output in `log`; the group is stopped on exit."""
    with open(log, "w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def wait_for(check, what: str, timeout: float, log: Path | None = None):
    """Poll `check()` until it returns something truthy; raise naming `what` (and the log's tail) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if result := check():
                return result
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


class DevTools:
    """A minimal Chrome DevTools protocol client of one page target (commands and their answers only)."""

    def __init__(self, websocket_url: str):
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=30)
        self._ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.socket.recv(timeout=60))
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.socket.close()


def start_chromium(executable: str, workdir: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    profile = workdir / "chromium-profile"
    command = [
        executable,
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # loopback only
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    return process(command, workdir / "chromium.log")


def devtools_of(profile: Path, log: Path) -> DevTools:
    """Connect to the page target of the Chromium whose profile is `profile` (its DevToolsActivePort file)."""
    port = wait_for(
        lambda: (profile / "DevToolsActivePort").read_text().split()[0], "Chromium's DevTools port", 60, log
    )
    pages = wait_for(
        lambda: [
            t
            for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            if t["type"] == "page"
        ],
        "a Chromium page",
        30,
        log,
    )
    return DevTools(pages[0]["webSocketDebuggerUrl"])


def wait_for_text(
    page: DevTools, expected: list[str], timeout: float, lines: bool = False
) -> tuple[str, list[str]]:
    """Poll the page's text until it holds every string of `expected` (with `lines`: as a whole line, or a line
    `<string> (<count>)`, as section headers read) or the time runs out: (text, missing)."""

    def absent(text: str) -> list[str]:
        if not lines:
            return [e for e in expected if e not in text]
        shown = {line.strip() for line in text.splitlines()}
        return [
            e
            for e in expected
            if e not in shown and not any(re.fullmatch(rf"{re.escape(e)} \(\d+\)", s) for s in shown)
        ]

    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = page.text()
        if not absent(text):
            return text, []
        time.sleep(1.0)
    return text, absent(text)


def expand_nested_runs(page: DevTools) -> None:
    """Click the run list's expanders of nested runs (their parent rows are collapsed at first)."""
    page.evaluate(
        "document.querySelectorAll('button[data-component-id*=\"runnamecellrenderer\"]').forEach(b => b.click())"
    )


def metric_groups(client, run_id: str) -> list[str]:
    """The `/`-groups of a run's metric names (`train/loss` -> `train`), sorted."""
    return sorted({key.split("/")[0] for key in client.get_run(run_id).data.metrics if "/" in key})


def check(
    tracking_uri: str, artifacts: str | None, experiment: str, chromium: str, screenshots: Path | None
) -> list[str]:
    """Run the checks; return the failures (empty: all passed)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [f"no experiment {experiment!r} in {tracking_uri}"]
    runs = client.search_runs([found.experiment_id], "tags.kind = 'ensemble'", order_by=["start_time DESC"])
    if not runs:
        return [f"no run tagged kind=ensemble in experiment {experiment!r}: train one first (--train)"]
    parent = runs[0]
    members = client.search_runs(
        [found.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.kind = 'member'"
    )
    groups = metric_groups(client, parent.info.run_id)
    failures = [
        f"the run has no metric group {group!r} (metric names `{group}/...`)"
        for group in REQUIRED_GROUPS
        if group not in groups
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir, port = Path(tmp), free_port()
        server = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        if artifacts:
            server += ["--default-artifact-root", artifacts]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        with (
            process(server, workdir / "mlflow.log", env=env),
            start_chromium(chromium, workdir),
        ):
            base = f"http://127.0.0.1:{port}"
            wait_for(
                lambda: requests.get(f"{base}/health", timeout=5).ok,
                "the MLflow server",
                180,
                workdir / "mlflow.log",
            )
            page = devtools_of(workdir / "chromium-profile", workdir / "chromium.log")
            try:
                page.call("Page.enable")
                # The experiment link the pipeline prints (`Tracker.experiment_url`): the Model training view.
                page.open(f"{base}/#/experiments/{found.experiment_id}/runs?{UI_WORKFLOW}")
                names = [parent.info.run_name]
                _, missing = wait_for_text(page, names, 90)
                failures += [f"run list: the run name {name!r} is not shown" for name in missing]
                expand_nested_runs(page)
                member_names = sorted(run.info.run_name for run in members)[:2]
                text, missing = wait_for_text(page, member_names, 20)
                failures += [
                    f"run list: the member run {name!r} is not shown once expanded" for name in missing
                ]
                where = page.evaluate("location.hash") or ""
                if "/runs" not in where or UI_WORKFLOW not in where:
                    failures.append(f"run list: the experiment link opened {where!r}, not its training runs")
                if screenshots:
                    page.screenshot(screenshots / "run-list.png")
                run_page = f"{base}/#/experiments/{found.experiment_id}/runs/{parent.info.run_id}"
                page.open(f"{run_page}/model-metrics?{UI_WORKFLOW}")
                text, missing = wait_for_text(page, groups, 90, lines=True)
                failures += [f"model-metrics page: no section {group!r}" for group in missing]
                if screenshots:
                    page.screenshot(screenshots / "model-metrics.png")
            finally:
                page.close()
    print(
        f"checked run {parent.info.run_name!r} ({parent.info.run_id}): run list and model-metrics sections "
        f"{groups}: {'OK' if not failures else f'{len(failures)} failure(s)'}"
    )
    return failures


def train_tiny(root: Path) -> tuple[str, str, str]:
    """Train a tiny ensemble (wine, 3 members, 2 epochs) into a store under `root`: (tracking URI, artifacts,
    experiment)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry traceback on start
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from flows.train import train_flow
    from tasks.config import load_config
    from tasks.tracking import TrackingSettings

    settings = TrackingSettings(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "mlartifacts"),
        experiment_name="ui-check",
        registered_model_name="ui-check",
    )
    config = load_config(
        overrides={
            "data.source": "wine",
            "model.members": 3,
            "model.hidden_units": [8, 8],
            "train.epochs": 2,
            "train.batch_size": 4,
            "output_dir": str(root / "outputs"),
        }
    )
    train_flow(config, settings)
    return settings.tracking_uri, str(root / "mlartifacts"), settings.experiment_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="the store (default: mlflow.yaml's)")
    parser.add_argument("--artifacts", help="the store's artifact root (the experiment's location wins)")
    parser.add_argument("--experiment", help="default: mlflow.yaml's experiment_name")
    parser.add_argument(
        "--train", action="store_true", help="train a tiny ensemble into a temporary store first"
    )
    parser.add_argument("--screenshots", type=Path, help="save run-list.png and model-metrics.png here")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("error: Chromium is not installed (`make chromium`: apt-get install chromium)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.train:
            uri, artifacts, experiment = train_tiny(Path(tmp))
        else:
            sys.path.insert(0, str(ROOT))
            from tasks.tracking import TrackingSettings

            settings = TrackingSettings.load()
            uri = args.tracking_uri or settings.tracking_uri
            artifacts = args.artifacts
            experiment = args.experiment or settings.experiment_name
        failures = check(uri, artifacts, experiment, chromium, args.screenshots)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
