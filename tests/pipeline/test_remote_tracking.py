"""Tracking on a real `mlflow server`: with nothing but `MLFLOW_TRACKING_URI=http://...`, artifacts go through
the server (no local `./mlartifacts`), and a second working directory that has only the URI loads and serves the
registered model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import mlflow
import pandas as pd
import requests
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_wine

from tests.pipeline.servers import BIN, child_env, free_port, mlflow_server, running

TINY = [
    *("--data", "wine", "--members", "2", "--epochs", "2"),
    *("--set", "model.hidden_units=[8]", "--set", "train.batch_size=8", "--set", "snapshots.cycle_length=1"),
]
LOAD_AND_PREDICT = """
import io, json, sys
import mlflow.pyfunc
import mlflow
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_json(io.StringIO(sys.argv[2]), orient="split").astype("float64")  # JSON reads 127.0 as int
print(json.dumps(model.predict(rows).to_dict(orient="list")))
"""


def test_a_tracking_server_uri_alone_sends_artifacts_through_the_server_and_serves_elsewhere(
    tmp_path, migrated_store
):
    shutil.copy(migrated_store, tmp_path / "server.db")
    url, server = mlflow_server(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log"
    )
    trainer, elsewhere = tmp_path / "trainer", tmp_path / "elsewhere"
    trainer.mkdir(), elsewhere.mkdir()
    env = child_env(
        MLFLOW_TRACKING_URI=url,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # an activated environment (uvicorn)
    )
    with server:
        trained = subprocess.run(
            [str(BIN / "ensemble"), "train", *TINY],
            cwd=trainer,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert trained.returncode == 0, trained.stdout[-4000:] + trained.stderr[-4000:]
        assert not (trainer / "mlartifacts").exists()  # nothing of the run is kept on the client
        assert any((tmp_path / "artifacts").rglob("MLmodel"))  # the model went to the server's store

        (registered,) = MlflowClient(url, url).search_registered_models()  # registry named too
        model_uri = f"models:/{registered.name}@champion"
        rows = load_wine(as_frame=True).data.head(5).astype("float64")
        previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(url), mlflow.set_registry_uri(url)
        try:  # the bundled set's columns, as the model names them
            info = mlflow.models.get_model_info(model_uri)
        finally:
            mlflow.set_tracking_uri(previous[0]), mlflow.set_registry_uri(previous[1])
        rows.columns = info.signature.inputs.input_names()
        loaded = subprocess.run(
            [sys.executable, "-c", LOAD_AND_PREDICT, model_uri, rows.to_json(orient="split")],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert loaded.returncode == 0, loaded.stderr[-4000:]
        predicted = pd.DataFrame(json.loads(loaded.stdout.strip().splitlines()[-1]))
        assert len(predicted) == 5 and "label" in predicted

        port = free_port()
        serve = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        serve += ["--host", "127.0.0.1", "-p", str(port)]
        with running(serve, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", cwd=elsewhere, env=env):
            answer = requests.post(
                f"http://127.0.0.1:{port}/invocations",
                json={"dataframe_split": json.loads(rows.to_json(orient="split"))},
                timeout=60,
            )
        assert answer.status_code == 200, answer.text
        served = pd.DataFrame(answer.json()["predictions"])
        pd.testing.assert_frame_equal(served[predicted.columns], predicted, check_dtype=False)
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # the second directory needed nothing local
