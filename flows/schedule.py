"""Scheduled retraining: the train flow as a Prefect deployment with a cron schedule.

Schedules need a Prefect server (`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`);
the temporary server Prefect starts without one stops with the process. For work pools see `prefect.yaml`.
"""

from __future__ import annotations

from uuid import UUID

from prefect import serve

from flows.train import train_flow
from tasks.config import PipelineConfig


def schedule_training(
    config: PipelineConfig, cron: str, name: str = "scheduled-retraining", serve_forever: bool = True
) -> UUID | None:
    """Create the deployment `train-ensemble/<name>` running `config` on `cron`.

    Args:
        config: the validated pipeline config passed to every scheduled run.
        cron: a cron expression, e.g. `"0 3 * * *"`.
        name: deployment name.
        serve_forever: start a runner in this process that executes the scheduled runs (blocks until Ctrl-C);
            False only registers the deployment (e.g. for a runner or worker started elsewhere).
    """
    deployment = train_flow.to_deployment(
        name=name, cron=cron, parameters={"config": config.model_dump()}, tags=["ensemble", "retraining"]
    )
    if serve_forever:
        serve(deployment)
        return None
    return deployment.apply()
