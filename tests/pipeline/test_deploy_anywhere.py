"""Issue acceptance: the registered model deploys where the project is not installed.

Only the registered model's artifacts leave the store: a fresh virtual environment is built from the model's own
`requirements.txt` (uv; its cache keeps reruns to seconds), the model is loaded there from a directory outside the
repository and answers exactly like the in-project model; `mlflow models serve --env-manager uv` builds its own
environment from the model and answers over REST with the status codes of the model's serving contract.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

# Prefect's log handlers bound to pytest's session-wide stderr (see test_cli.py), before `main` runs in a test.
import prefect.main  # noqa: F401
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from ensemble.data import PreparedData
from flows.cli import main
from flows.train import train_flow
from tasks.contract import STATUS_CODES
from tasks.requirements import INFERENCE_PACKAGES, LOCK_FILE, inference_requirements, read_lock
from tests.pipeline.helpers import private_tracking, tiny_config
from tests.pipeline.servers import free_port, invoke, stop

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UV = str(BIN / "uv")
MLFLOW_CLI = str(BIN / "mlflow")
MODEL = "models:/test-ensemble@champion"
INSTALL_TIMEOUT_S = 1200  # the first install downloads TensorFlow; with uv's cache warm it takes seconds
ROWS = 6

# Runs with the fresh environment's interpreter, in a directory outside the repository.
LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])
import ensemble
print(json.dumps({
    "ensemble": ensemble.__file__,
    "imported": sorted({name.split(".")[0] for name in sys.modules}),
    "prefect_installed": importlib.util.find_spec("prefect") is not None,
}))
"""


def outside_env(**extra: str) -> dict[str, str]:
    """The environment of a process that must not see the project: no PYTHONPATH, no active virtualenv, this
    venv's bin only on PATH's tail (for `uv`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), str(BIN)])
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return {**env, **extra}


def run(command: list[str], cwd: Path, timeout: float = 600, **extra: str) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=outside_env(**extra), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done.stdout


def assert_same_predictions(answered: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same columns and labels; probabilities equal to 1e-9 (NumPy's float64 mean may differ in the last bit
    between processes: its SIMD summation order follows the memory alignment; seen once, 2e-16)."""
    assert list(answered.columns) == list(expected.columns)
    assert answered["label"].tolist() == expected["label"].tolist()
    proba = [c for c in expected.columns if c.startswith("proba_")]
    assert len(proba) == 3  # wine
    np.testing.assert_allclose(answered[proba].to_numpy(), expected[proba].to_numpy(), rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, migrated_store, prefect_api):
    """One train_flow on a private store; the champion's artifacts downloaded to a directory of their own:
    `(settings, model_dir, rows, in-project predictions, train result)`."""
    root = tmp_path_factory.mktemp("deploy")
    settings = private_tracking(root, migrated_store)
    result = train_flow(tiny_config(root), settings)
    assert result["registration"]["alias"] == "champion"
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    rows = prepared.raw["test"][prepared.feature_names].head(ROWS).reset_index(drop=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    model_dir = Path(mlflow.artifacts.download_artifacts(MODEL, dst_path=str(root / "downloaded")))
    expected = mlflow.pyfunc.load_model(MODEL).predict(rows)  # the in-project model
    return settings, model_dir, rows, expected, result


@pytest.fixture(scope="module")
def fresh_python(registered, tmp_path_factory) -> Path:
    """A new virtual environment with the model's Python version and nothing but its `requirements.txt`."""
    _, model_dir, *_ = registered
    root = tmp_path_factory.mktemp("fresh-env")
    python_version = yaml.safe_load((model_dir / "python_env.yaml").read_text())["python"]
    run([UV, "venv", "--quiet", "--python", python_version, str(root / "venv")], cwd=root)
    python = root / "venv" / "bin" / "python"
    run(
        [UV, "pip", "install", "--quiet", "--python", str(python), "-r", str(model_dir / "requirements.txt")],
        cwd=root,
        timeout=INSTALL_TIMEOUT_S,
    )
    return python


def test_model_carries_its_code_locked_requirements_and_python_version(registered):
    settings, model_dir, *_ = registered
    assert (model_dir / "code" / "ensemble" / "predictor.py").is_file()
    assert not (model_dir / "code" / "tasks").exists()  # no Prefect task, no tracking code travels

    requirements = (model_dir / "requirements.txt").read_text().split()
    assert requirements == inference_requirements()
    pins = dict(line.split("==") for line in requirements)
    lock = read_lock(LOCK_FILE)
    assert all(lock[name] == version for name, version in pins.items())  # every pin is the lock's
    assert set(INFERENCE_PACKAGES) <= set(pins)
    assert not {"prefect", "mlflow"} & set(
        pins
    )  # the loader is mlflow-skinny; no tracking server, no Prefect
    assert yaml.safe_load((model_dir / "python_env.yaml").read_text())["python"] == platform.python_version()

    contract = mlflow.models.get_model_info(MODEL).metadata["serving_contract"]
    assert [c["name"] for c in contract["inputs"]] == list(registered[2].columns)
    assert [c["name"] for c in contract["outputs"]] == list(registered[3].columns)
    version = MlflowClient(settings.tracking_uri).get_model_version_by_alias("test-ensemble", "champion")
    assert "Serving contract v1" in version.description
    assert all(f"`{c['name']}`" in version.description for c in contract["outputs"])


def test_model_loads_in_a_fresh_environment_outside_the_project_and_predicts_exactly_alike(
    registered, fresh_python, tmp_path
):
    _, model_dir, rows, expected, _ = registered
    rows.to_parquet(tmp_path / "rows.parquet")
    report = json.loads(
        run(
            [str(fresh_python), "-I", "-c", LOAD_AND_PREDICT, str(model_dir), "rows.parquet", "out.parquet"],
            cwd=tmp_path,
        )
        .strip()
        .splitlines()[-1]
    )
    assert_same_predictions(pd.read_parquet(tmp_path / "out.parquet"), expected)
    assert Path(report["ensemble"]).is_relative_to(model_dir / "code")  # the model's own copy of the library
    assert not report["prefect_installed"]
    assert not {"prefect", "tasks", "flows"} & set(report["imported"])
    assert not str(tmp_path).startswith(str(REPO_ROOT))


@pytest.fixture(scope="module")
def uv_served_url(registered, tmp_path_factory):
    """`mlflow models serve --env-manager uv` of the downloaded model, its environment under a private root."""
    _, model_dir, *_ = registered
    root = tmp_path_factory.mktemp("uv-serve")
    port = free_port()
    log = root / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [MLFLOW_CLI, "models", "serve", "-m", str(model_dir), "--env-manager", "uv"]
            + ["-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=outside_env(MLFLOW_ENV_ROOT=str(root / "envs")),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server, log, INSTALL_TIMEOUT_S)
        yield url
    finally:
        stop(server)


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve not up after {timeout_s} s:\n{log.read_text()[-4000:]}")


def test_model_served_from_its_own_uv_environment_keeps_the_serving_contract(registered, uv_served_url):
    _, _, rows, expected, _ = registered
    answered = invoke(uv_served_url, rows)
    assert answered.status_code == 200, answered.text
    assert_same_predictions(pd.DataFrame(answered.json()["predictions"]), expected)

    extra = invoke(uv_served_url, rows.assign(unused=1.0, comment=0.0))  # extra columns are ignored
    assert extra.status_code == 200, extra.text
    assert extra.json() == answered.json()

    missing = invoke(uv_served_url, rows.drop(columns=[rows.columns[0]]))
    assert missing.status_code == 400 and "400" in STATUS_CODES
    assert missing.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert rows.columns[0] in missing.json()["message"]

    plain = requests.post(f"{uv_served_url}/invocations", data="1,2", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "415" in STATUS_CODES


def test_cli_deploy_writes_a_dockerfile_serving_the_champion_with_its_pinned_environment(
    registered, tmp_path, monkeypatch, capsys
):
    settings, model_dir, *_ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("ENSEMBLE_REGISTERED_MODEL", settings.registered_model_name)
    monkeypatch.delenv("ENSEMBLE_MLFLOW_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no repo mlflow.yaml

    assert main(["deploy", "--dockerfile", "image"]) == 0
    assert "docker build -t fused-ensemble image" in capsys.readouterr().out
    dockerfile = (tmp_path / "image" / "Dockerfile").read_text()
    assert f"FROM python:{platform.python_version()}-slim" in dockerfile
    assert f"RUN pip install mlflow=={mlflow.__version__}" in dockerfile
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model'" in dockerfile  # installs the model's requirements.txt
    assert "C._serve('local')" in dockerfile
    copied = tmp_path / "image" / "model_dir"
    assert (copied / "requirements.txt").read_text() == (model_dir / "requirements.txt").read_text()
    assert (copied / "code" / "ensemble" / "predictor.py").is_file()

    assert main(["deploy", "--dockerfile", "image"]) == 2  # never writes over an existing context
    assert "must name a new or empty directory" in capsys.readouterr().err
