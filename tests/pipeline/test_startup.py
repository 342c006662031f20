"""What the CLI does for a quick start (README "Start-up time"): XLA's persistent compilation cache, and no flow-run
heartbeats on the temporary Prefect server it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import get_current_settings

from flows import xla_cache
from flows.prefect_api import TemporaryServer, flow_run_settings

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
