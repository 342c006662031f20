"""`ensemble deploy --dockerfile DIR`: a Docker build context that serves a registered model alias (the champion).

MLflow writes it (`mlflow models generate-dockerfile`): `DIR/Dockerfile` on `python:<the model's Python>-slim`, and
the model itself under `DIR/model_dir` (its code, `requirements.txt` pinned from the lock, serving contract). The
image installs MLflow and the model's requirements and serves the model on port 8080 (`/invocations`, `/ping`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.tracking import TrackingSettings

MLFLOW_CLI = os.path.join(os.path.dirname(sys.executable), "mlflow")


def write_dockerfile(
    directory: str | Path, settings: TrackingSettings, alias: str = "champion", model_name: str | None = None
) -> Path:
    """Write the build context for `models:/<model_name>@<alias>` into `directory`; returns the Dockerfile.

    Args:
        directory: a new or empty directory (the model is downloaded into it).
        settings: the store holding the registered model.
        alias: the registered model alias to serve.
        model_name: the registered model (default: `settings.registered_model_name`; see `Tracker.model_name`).
    """
    from tasks.tracking import Tracker

    directory = check_build_directory(directory)
    uri = f"models:/{Tracker(settings).model_name(model_name)}@{alias}"  # no name: the error lists the models
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.registry_uri or settings.tracking_uri,
    }
    done = subprocess.run(
        [MLFLOW_CLI, "models", "generate-dockerfile", "-m", uri, "-d", str(directory)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        cause = [line for line in done.stderr.splitlines() if line.strip()][-1:]  # the exception's line
        raise RuntimeError(f"mlflow models generate-dockerfile -m {uri} failed: {' '.join(cause)}")
    return directory / "Dockerfile"


def check_build_directory(directory: str | Path) -> Path:
    """`directory` if it is new or empty (the build context is written there); ValueError otherwise."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(
            f"Argument `--dockerfile` must name a new or empty directory; {directory} is not empty. "
            "Pass another directory or empty this one."
        )
    return directory
