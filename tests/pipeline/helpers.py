"""Shared pieces of the pipeline tests: the tiny config every flow test trains with, and a private MLflow store
for module-scoped fixtures (the per-test `tracking` fixture of conftest.py cannot serve a module)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.config import PipelineConfig, load_config
from tasks.tracking import TrackingSettings

MEMBERS, EPOCHS = 3, 2

# A line of TensorFlow's C++ logging (`I0000 00:00:1795997942.793525    3061 cudart_stub.cc:31] ...`) or absl's note.
TF_NATIVE_NOTE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]|absl::InitializeLog", re.MULTILINE)


def tiny_config(tmp_path, **overrides) -> PipelineConfig:
    """wine (178 rows, 3 classes), 3 members of 8-8 units, 2 epochs of 1 SGDR cycle each."""
    values = {
        "data.source": "wine",
        "model.members": MEMBERS,
        "model.hidden_units": [8, 8],
        "train.epochs": EPOCHS,
        "train.batch_size": 4,
        "snapshots.cycle_length": 1,
        "snapshots.lr_init": 0.02,
        "output_dir": str(tmp_path / "outputs"),
        **overrides,
    }
    return load_config(overrides=values)


def private_tracking(root: Path, migrated_store: Path) -> TrackingSettings:
    """Like conftest's `tracking`, under `root`: a copy of the migrated SQLite store + local artifacts."""
    db = Path(root) / "mlflow.db"
    shutil.copy(migrated_store, db)
    return TrackingSettings(
        tracking_uri=f"sqlite:///{db}",
        artifact_location=str(Path(root) / "mlartifacts"),
        experiment_name="tests",
        registered_model_name="test-ensemble",
    )


SLOW_IMPORTS = ("tensorflow", "prefect", "mlflow", "sklearn")


def cli_in_a_fresh_process(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`ensemble <args>` in a new interpreter (with `env`, default this process's); its stdout's last line lists
    which of `SLOW_IMPORTS` it loaded."""
    code = (
        "import sys; from flows.cli import main; code = main(sys.argv[1:]); "
        f"print(*[m for m in {SLOW_IMPORTS!r} if m in sys.modules]); sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
