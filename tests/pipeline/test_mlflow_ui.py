"""The MLflow UI in a real browser (headless Chromium, `scripts/check_mlflow_ui.py`): the run list shows the runs'
names, the model-metrics page the grouped metric sections. Skipped where Chromium is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.train import train_flow
from tasks.tracking import Tracker
from tests.pipeline.helpers import tiny_config
from tests.pipeline.servers import child_env, spawn, stop

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_mlflow_ui.py"
sys.path.insert(0, str(SCRIPT.parent))
from check_mlflow_ui import find_chromium  # noqa: E402

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed (`make chromium` installs the Debian package)"
)


def run_check(tracking, log: Path) -> tuple[int, str]:
    """The UI check on the store of `tracking`, as a child process that is stopped (with its servers) whatever
    happens."""
    command = [
        sys.executable,
        str(SCRIPT),
        "--tracking-uri",
        tracking.tracking_uri,
        "--artifacts",
        tracking.artifact_location,
        "--experiment",
        tracking.experiment_name,
    ]
    check = spawn(command, log, env=child_env())
    try:
        code = check.wait(timeout=420)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(check)
    return code, log.read_text()


@pytest.mark.usefixtures("prefect_api")
def test_the_ui_lists_the_run_by_name_and_shows_the_grouped_metric_sections(tmp_path, tracking):
    result = train_flow(tiny_config(tmp_path, **{"registry.enabled": False}), tracking)
    code, output = run_check(tracking, tmp_path / "check.log")
    assert code == 0, output
    assert "wine 3x[8,8] sgdr-2" in output and "OK" in output
    assert result["run_id"] in output


def test_the_ui_check_fails_on_a_run_whose_metrics_are_not_grouped(tmp_path, tracking):
    tracker = Tracker(tracking)
    run_id = tracker.start_run("flat names", tags={"kind": "ensemble"})
    tracker.log_metrics(run_id, {"test_accuracy": 0.9, "val_loss": 0.3})
    tracker.finish_run(run_id)
    code, output = run_check(tracking, tmp_path / "check.log")
    assert code == 1, output
    assert "the run has no metric group 'train'" in output
