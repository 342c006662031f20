"""Scheduled retraining: the train flow as a Prefect deployment on a cron or interval schedule.

Schedules need a Prefect server (`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`):
the temporary server Prefect starts without one stops with the process, and nothing would fire.

Two ways to run the scheduled flow runs:
- served (default): this process creates the deployment and runs its flow runs until Ctrl-C, which pauses the
  deployment's schedule on the server (Prefect's `serve`);
- a work pool (`serve_forever=False`): the deployment is bound to a process work pool and any
  `prefect worker start --pool <pool>` started in an environment with this project installed runs it. The
  entrypoint is the module path `flows.train.train_flow` and the worker runs it in the working directory the
  schedule was created in, so `mlflow.yaml`, relative data paths and `outputs/` resolve as for `ensemble train`.

Either way the deployment runs one flow run at a time (its concurrency limit is 1): a run due while another trains
waits for it.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.types.entrypoint import EntrypointType

from flows.prefect_api import require_server
from flows.train import train_flow
from tasks.config import PipelineConfig

DEFAULT_POOL = "default"


def schedule_training(
    config: PipelineConfig,
    cron: str | None = None,
    name: str = "scheduled-retraining",
    serve_forever: bool = True,
    interval: float | None = None,
    pool: str = DEFAULT_POOL,
) -> UUID | None:
    """Create the deployment `train-ensemble/<name>` running `config` on `cron` or every `interval` seconds.

    Args:
        config: the validated pipeline config passed to every scheduled run.
        cron: a cron expression, e.g. `"0 3 * * *"`; or
        interval: seconds between runs (exactly one of `cron` and `interval`).
        name: deployment name.
        serve_forever: run the scheduled flow runs in this process (blocks until Ctrl-C); False binds the
            deployment to the process work pool `pool` (created if missing) and returns its id.
        pool: the work pool of a `serve_forever=False` deployment.

    Raises:
        ValueError: neither or both of `cron` and `interval`, or an interval <= 0.
        RuntimeError: no Prefect server is configured (`PREFECT_API_URL` unset): nothing could run the schedule.
    """
    if (cron is None) == (interval is None):
        raise ValueError("Pass exactly one of `cron` and `interval` (seconds). Received: neither or both")
    if interval is not None and interval <= 0:
        raise ValueError(f"Argument `interval` must be > 0 seconds. Received: interval={interval}")
    require_server()
    schedule = {"cron": cron} if cron is not None else {"interval": timedelta(seconds=interval)}
    common = {
        "name": name,
        "parameters": {"config": config.model_dump()},
        "tags": ["ensemble", "retraining"],
        # Retrainings never overlap: a run due while another trains waits for it (Prefect queues it), however many
        # workers poll the pool, and a worker that comes back after a pause does not start the missed runs at once.
        "concurrency_limit": 1,
    }
    if serve_forever:
        serve(train_flow.to_deployment(**common, **schedule), limit=1)
        return None
    ensure_process_pool(pool)
    deployment = train_flow.to_deployment(
        **common,
        **schedule,
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables={"working_dir": str(Path.cwd())},
    )
    return deployment.apply(work_pool_name=pool)


def ensure_process_pool(name: str) -> None:
    """Create the process work pool `name` unless it exists (any type: the user's choice is kept)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # created concurrently
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
