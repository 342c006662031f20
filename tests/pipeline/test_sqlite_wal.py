"""A local SQLite store is written in WAL mode with `synchronous=NORMAL`, and other processes still read it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine

from tasks.sqlite_wal import sqlite_file, use_wal
from tasks.tracking import Tracker

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def pragmas(uri: str) -> tuple[str, str]:
    """(journal_mode, synchronous) of a new SQLAlchemy connection to `uri`."""
    engine = create_engine(uri)
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        engine.dispose()
    return mode, SYNCHRONOUS[synchronous]


def test_registered_store_connects_in_wal_mode_and_others_are_left_alone(tmp_path, migrated_store):
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    shutil.copy(migrated_store, ours)
    shutil.copy(migrated_store, theirs)
    assert use_wal(f"sqlite:///{ours}")
    assert pragmas(f"sqlite:///{ours}") == ("wal", "NORMAL")
    assert pragmas(f"sqlite:///{theirs}") == ("delete", "FULL")  # SQLite's defaults


def test_only_local_sqlite_files_are_registered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///mlflow.db") == str(tmp_path.resolve() / "mlflow.db")
    assert sqlite_file(f"sqlite:///{tmp_path}/a.db") == str(tmp_path.resolve() / "a.db")
    for uri in ("sqlite://", "sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql://u@h/db", None):
        assert sqlite_file(uri) is None
        assert use_wal(uri) is False


def test_tracker_writes_in_wal_mode_and_another_process_reads_the_writes(tracking):
    tracker = Tracker(tracking)
    run_id = tracker.start_run("written-in-wal-mode")
    tracker.log_params(run_id, {"member": 7})
    tracker.log_metrics(run_id, {"test/accuracy": 0.875})
    db = Path(sqlite_file(tracking.tracking_uri))
    assert Path(f"{db}-wal").exists()  # this process still holds its connections: the log is not merged yet
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # a property of the file
    reader = (
        "import sys; from mlflow.tracking import MlflowClient; "
        "run = MlflowClient(sys.argv[1]).get_run(sys.argv[2]); "
        "print(run.data.params['member'], run.data.metrics['test/accuracy'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", reader, tracking.tracking_uri, run_id],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.split()[-2:] == ["7", "0.875"]
