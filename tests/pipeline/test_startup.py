"""What the CLI does for a quick start (README "Start-up time"): XLA's persistent compilation cache, no flow-run
heartbeats on the temporary Prefect server it starts itself, and the MLflow store opened while Prefect creates the
flow run."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import get_current_settings

from flows import xla_cache
from flows.prefect_api import TemporaryServer, flow_run_settings
from tasks.requirements import prepare_requirement_checks
from tasks.tracking import Tracker, TrackingSettings, open_store_early

FLAG = xla_cache.FLAG


def test_the_xla_cache_goes_to_a_new_folder_of_the_user_cache_named_after_tensorflow_and_the_cpu(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    directory = xla_cache.enable(environ)
    expected = (
        tmp_path / "fused-ensembles" / "xla" / f"{xla_cache.tensorflow_version()}-{xla_cache.cpu_digest()}"
    )
    assert directory == str(expected) and expected.is_dir()
    assert environ["TF_XLA_FLAGS"] == f"{FLAG}={expected}"
    assert xla_cache.tensorflow_version().split(".")[0].isdigit()  # read from TensorFlow's dist-info


def test_the_xla_cache_keeps_other_xla_flags_and_yields_to_a_cache_the_environment_names(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}
    directory = xla_cache.enable(environ)
    assert environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=2 {FLAG}={directory}"
    for flags, in_use in ((f"{FLAG}=/elsewhere", "/elsewhere"), (f"{FLAG}=", None)):  # empty: no cache
        environ = {"XDG_CACHE_HOME": str(tmp_path / "other"), "TF_XLA_FLAGS": flags}
        assert xla_cache.enable(environ) == in_use
        assert environ["TF_XLA_FLAGS"] == flags
    assert not (tmp_path / "other").exists()


def test_the_xla_cache_deletes_the_files_written_longest_ago_down_to_its_size_limit_but_never_recent_ones(
    tmp_path,
):
    now = time.time()
    ages_hours = {"oldest": 50, "old": 40, "middle": 30, "recent_a": 0.5, "recent_b": 0.1}
    for name, hours in ages_hours.items():
        path = tmp_path / name
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - hours * 3600, now - hours * 3600))
    deleted = xla_cache.prune(tmp_path, max_bytes=3000, now=now)
    assert [p.name for p in deleted] == ["oldest", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle", "recent_a", "recent_b"]
    assert xla_cache.prune(tmp_path, max_bytes=0, now=now) == [tmp_path / "middle"]  # recent ones stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recent_a", "recent_b"]


def test_enabling_the_xla_cache_prunes_its_folder(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    directory = Path(xla_cache.default_directory(environ))
    directory.mkdir(parents=True)
    old = directory / "program"
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert xla_cache.enable(environ, max_bytes=5) == str(directory)
    assert not old.exists()


def test_an_unusable_cache_folder_sets_no_flag_since_tensorflow_would_fail_the_xla_call(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    environ = {"XDG_CACHE_HOME": str(blocker)}  # the cache folder would have to be created inside a file
    assert xla_cache.enable(environ) is None
    assert "TF_XLA_FLAGS" not in environ


COMPILE = (
    "import tensorflow as tf; "
    "f = tf.function(lambda x: tf.reduce_sum(x * 2.0 + 1.0), jit_compile=True); "
    "print(float(f(tf.constant([1.0, 2.0]))))"
)


def test_a_second_process_loads_the_xla_program_the_first_compiled_instead_of_compiling_it(tmp_path):
    """TensorFlow's own log says where the program came from (`device_executable_persistor`, VLOG 1)."""
    environ = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    environ.update(XDG_CACHE_HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="0")
    environ["TF_CPP_VMODULE"] = "device_executable_persistor=1"
    directory = Path(xla_cache.enable(environ))

    def compile_once() -> str:
        completed = subprocess.run(
            [sys.executable, "-c", COMPILE], env=environ, capture_output=True, text=True, timeout=180
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.split() == ["8.0"]  # (2 + 1) + (4 + 1), from the loaded program too
        return completed.stderr

    first = compile_once()
    assert "Loading cached entry" not in first and "saving cache entry" in first
    assert [p.name.startswith("xla_compile_cache") for p in directory.iterdir()] == [True]
    second = compile_once()
    assert "Loading cached entry" in second and "saving cache entry" not in second


@flow
def heartbeat_setting() -> int | None:
    """The heartbeat interval Prefect's flow engine reads for this run (None: no heartbeat thread)."""
    return get_current_settings().flows.heartbeat_frequency


@pytest.mark.usefixtures("prefect_api")
def test_flow_runs_on_the_clis_own_temporary_server_send_no_heartbeats_and_others_keep_them():
    """A flow run's heartbeat thread is joined at its end, waiting out a 1 s sleep; on the temporary server that
    ends with the process, nothing would read the heartbeats."""
    own = TemporaryServer(process=None, url="http://127.0.0.1:1/api")  # only its presence matters here
    with flow_run_settings(own):
        assert heartbeat_setting() is None
    configured = heartbeat_setting()
    with flow_run_settings(None):
        assert heartbeat_setting() == configured is not None


def test_the_first_tracker_of_a_store_being_opened_early_waits_for_it_and_the_store_is_built_once(tmp_path):
    """`open_store_early` builds (here: creates and migrates) the store on a thread. The first `Tracker` of it waits
    and takes that store from MLflow's cache; building its own beside it would pay the whole opening again. The
    test holds the new file locked, so the opening cannot end before the `Tracker` is made."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    builds = _tracking_store_registry._get_store_with_resolved_uri.cache_info
    path = tmp_path / "new.db"
    settings = TrackingSettings(tracking_uri=f"sqlite:///{path}", experiment_name="early")
    before = builds().misses
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        open_store_early(settings)
        with ThreadPoolExecutor(1) as pool:
            made = pool.submit(Tracker, settings)
            time.sleep(1.0)
            lock.execute("COMMIT")
            tracker = made.result(timeout=120)
    assert builds().misses - before == 1
    run_id = tracker.start_run("first")
    assert tracker.client.get_run(run_id).info.experiment_id == tracker.experiment_id()
    assert [e.name for e in tracker.client.search_experiments()] == ["early", "Default"]


def test_a_store_that_cannot_be_opened_early_fails_where_its_tracker_uses_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = TrackingSettings(tracking_uri=f"sqlite:///{blocker / 'mlflow.db'}")  # a folder inside a file
    open_store_early(settings)  # says nothing: the failure belongs to the step that needs the store
    with pytest.raises(FileExistsError, match="a-file"):
        Tracker(settings).experiment_id()


def test_model_loggings_requirement_checks_can_be_prepared_ahead_of_the_first_model():
    """The map MLflow's first model logging builds to check the model's requirements (`prepare_requirement_checks`
    builds it beside the run's first steps); if MLflow moves it, this fails and the preparation is a no-op."""
    from mlflow.utils import requirements_utils

    requirements_utils._MODULES_TO_PACKAGES = requirements_utils._PACKAGES_TO_MODULES = None
    prepare_requirement_checks()
    assert requirements_utils._PACKAGES_TO_MODULES["tensorflow"] == "tensorflow"
