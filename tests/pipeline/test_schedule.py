"""Scheduled retraining: the train flow as a Prefect deployment with a cron schedule, read back from the API."""

from __future__ import annotations

# Create Prefect's log handlers now, bound to pytest's session-wide stderr: created inside a test by `main`,
# they would keep writing to that test's (then closed) capsys stream.
import prefect.main  # noqa: F401
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound

from flows.cli import main
from flows.schedule import schedule_training
from tasks.config import PipelineConfig
from tests.pipeline.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")


def read_deployment(name: str):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"train-ensemble/{name}")


def cron_schedules(deployment) -> list[CronSchedule]:
    return [s.schedule for s in deployment.schedules if isinstance(s.schedule, CronSchedule)]


def test_schedule_training_creates_a_cron_deployment_with_the_config(tmp_path):
    config = tiny_config(tmp_path, **{"model.members": 4, "data.seed": 7})
    deployment_id = schedule_training(config, "0 3 * * *", name="nightly", serve_forever=False)

    deployment = read_deployment("nightly")
    assert deployment.id == deployment_id
    assert [s.cron for s in cron_schedules(deployment)] == ["0 3 * * *"]
    assert all(s.active for s in deployment.schedules)
    assert PipelineConfig.model_validate(deployment.parameters["config"]) == config
    assert deployment.parameters["config"]["model"]["members"] == 4


def test_cli_schedule_without_serving_creates_the_deployment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no mlflow.yaml of the repo
    code = main(
        ["schedule", "--cron", "*/5 * * * *", "--name", "cli-nightly", "--no-serve"]
        + ["--set", "model.members=2", "--set", f"output_dir={tmp_path / 'outputs'}"]
    )
    assert code == 0, capsys.readouterr().err

    deployment = read_deployment("cli-nightly")
    assert [s.cron for s in cron_schedules(deployment)] == ["*/5 * * * *"]
    config = PipelineConfig.model_validate(deployment.parameters["config"])
    assert config.model.members == 2
    assert config.output_dir == str(tmp_path / "outputs")
    assert str(deployment.id) in capsys.readouterr().out
    # However many workers poll the pool, retrainings do not overlap (a worker back from a pause would otherwise
    # start every missed run at once).
    assert deployment.global_concurrency_limit.limit == 1


def test_cli_schedule_with_a_bad_cron_exits_2_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["schedule", "--cron", "every night", "--name", "bad-cron", "--no-serve"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
    assert "every night" in err
    with pytest.raises(ObjectNotFound):
        read_deployment("bad-cron")
