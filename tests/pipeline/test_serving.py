"""Issue acceptance: the registered champion served by `mlflow models serve` answers like the in-process predictor,
and bad requests get a 4xx with a readable message (never a 500)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from ensemble.data import DataError, PreparedData
from ensemble.predictor import EnsemblePredictor
from flows.train import train_flow
from tests.pipeline.helpers import TF_NATIVE_NOTE, private_tracking, tiny_config
from tests.pipeline.servers import free_port, invoke, spawn, stop, wait_healthy

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO_ROOT = Path(__file__).resolve().parents[2]
MLFLOW_CLI = str(Path(sys.executable).with_name("mlflow"))
START_TIMEOUT_S = 120
ROWS = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, migrated_store, prefect_api):
    """One train_flow of a sweep (its registered model weights the selected members) on a private store:
    `(result, settings, prepared data)`."""
    root = tmp_path_factory.mktemp("serving")
    settings = private_tracking(root, migrated_store)
    sweep = {"model.members": 4, "sweep.learning_rate": [0.005, 0.02], "sweep.weight_decay": [0.0, 1e-3]}
    result = train_flow(tiny_config(root, **sweep), settings)
    assert result["registration"]["alias"] == "champion"
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    return result, settings, prepared, root


@pytest.fixture(scope="module")
def server_url(trained):
    """`mlflow models serve -m models:/test-ensemble@champion --env-manager local` on a free port."""
    _, settings, _, root = trained
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.tracking_uri,
        # The server execs `uvicorn` by name: the venv's bin must be on PATH even if the venv is not activated.
        "PATH": os.pathsep.join([str(Path(MLFLOW_CLI).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # What users commonly export to quieten TensorFlow; at 2 its start-up notes still reach stderr unless muted.
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = root / "serve.log"
    server = spawn(
        [MLFLOW_CLI, "models", "serve", "-m", "models:/test-ensemble@champion", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        log,
        cwd=root,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/ping", server, log, timeout=START_TIMEOUT_S)
        yield url
    finally:
        stop(server)


def test_served_champion_answers_like_the_in_process_predictor(trained, server_url):
    result, _, prepared, _ = trained
    rows = prepared.raw["test"][prepared.feature_names].head(ROWS)
    response = invoke(server_url, rows)
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])

    expected = EnsemblePredictor.load(result["predictor_dir"]).predict(rows)
    proba = [c for c in expected.columns if c.startswith("proba_")]
    assert len(proba) == 3  # wine has 3 classes
    assert list(served.columns) == list(expected.columns)
    np.testing.assert_allclose(served[proba].to_numpy(), expected[proba].to_numpy(), atol=1e-6)
    assert served["label"].tolist() == expected["label"].tolist()


def test_served_answers_carry_each_rows_uncertainty_from_the_weighted_members(trained, server_url):
    result, _, prepared, _ = trained
    rows = prepared.raw["test"][prepared.feature_names].head(ROWS)
    served = pd.DataFrame(invoke(server_url, rows).json()["predictions"])

    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert predictor.weights is not None  # the sweep's selection
    w = np.asarray(predictor.weights)
    probs = np.exp(predictor.predict_members(rows, log_probs=True))  # (K, B, C)
    mean = np.einsum("k,kbc->bc", w, probs)
    entropy = -(mean * np.log(mean)).sum(-1)
    member_entropy = np.einsum("k,kb->b", w, -(probs * np.log(probs)).sum(-1))
    votes = (probs.argmax(-1) != mean.argmax(-1)[None]).astype(float)  # (K, B)
    np.testing.assert_allclose(served["predictive_entropy"], entropy, atol=1e-6)
    np.testing.assert_allclose(served["mean_member_entropy"], member_entropy, atol=1e-6)
    np.testing.assert_allclose(served["mutual_information"], entropy - member_entropy, atol=1e-6)
    np.testing.assert_allclose(served["disagreement"], w @ votes, atol=1e-9)
    proba = [c for c in served.columns if c.startswith("proba_")]
    np.testing.assert_allclose(served[proba].to_numpy(), mean, atol=1e-6)  # the weighted mean of the members


def test_request_missing_a_column_gets_4xx_naming_it(trained, server_url):
    _, _, prepared, _ = trained
    missing = prepared.feature_names[1]
    rows = prepared.raw["test"][prepared.feature_names].head(ROWS).drop(columns=[missing])
    response = invoke(server_url, rows)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["message"]
    assert "missing" in message
    assert repr([missing]) in message  # e.g. "Model is missing inputs ['malic_acid']"


def test_request_with_a_non_numeric_value_gets_4xx_not_500(trained, server_url):
    _, _, prepared, _ = trained
    rows = prepared.raw["test"][prepared.feature_names].head(ROWS).astype(object)
    column = prepared.feature_names[0]
    rows.iloc[2, 0] = "not-a-number"
    response = invoke(server_url, rows)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["message"]
    assert column in message
    assert "not-a-number" in message


JSON = "application/json"
EMPTY_REQUESTS = {  # name -> (body, content type)
    "no_rows": (lambda columns: json.dumps({"dataframe_split": {"columns": columns, "data": []}}), JSON),
    "empty_json_object": (lambda columns: "{}", JSON),
    "empty_body": (lambda columns: "", JSON),
    "csv_header_only": (lambda columns: ",".join(columns) + "\n", "text/csv"),
}


@pytest.mark.parametrize("case", list(EMPTY_REQUESTS))
def test_empty_request_gets_4xx_with_a_message_and_no_stack_trace(case, trained, server_url):
    _, _, prepared, _ = trained
    body, kind = EMPTY_REQUESTS[case]
    response = requests.post(
        f"{server_url}/invocations",
        data=body(prepared.feature_names),
        headers={"Content-Type": kind},
        timeout=60,
    )
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text, response.text
    assert response.headers["Content-Type"] == JSON, response.text
    assert response.json()["message"] and "stack_trace" not in response.json(), response.text


def test_the_predictor_refuses_a_frame_without_rows_naming_the_columns(trained):
    result, _, prepared, _ = trained
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    with pytest.raises(
        DataError, match=r"No rows to predict: send at least one row with the feature columns \['"
    ):
        predictor.predict(prepared.raw["test"][prepared.feature_names].head(0))


def test_the_served_models_log_has_none_of_tensorflows_native_notes(trained, server_url):
    """`mlflow models serve` loads `tasks/pyfunc.py`, which loads TensorFlow through `ensemble.tensorflow_quietly`."""
    log = (trained[3] / "serve.log").read_text()
    assert "Listening at" in log or "Uvicorn running" in log or "Started server" in log, log
    assert not TF_NATIVE_NOTE.search(log), log
