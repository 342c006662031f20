"""`tasks.contract`: the serving contract names the signature's columns and types, with every output explained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature

from tasks.contract import STATUS_CODES, describe, serving_contract
from tasks.registry import model_signature

ROWS = pd.DataFrame({"alcohol": [13.2, 12.4], "hue": [1.0, 0.9]})


def test_classification_contract_lists_inputs_outputs_and_status_codes():
    output = pd.DataFrame({"proba_a": [0.9, 0.2], "proba_b": [0.1, 0.8], "label": ["a", "b"]})
    contract = serving_contract(model_signature(ROWS, output))

    assert contract["inputs"] == [{"name": "alcohol", "type": "double"}, {"name": "hue", "type": "double"}]
    assert [(c["name"], c["type"]) for c in contract["outputs"]] == [
        ("proba_a", "double"),
        ("proba_b", "double"),
        ("label", "string"),
    ]
    assert all(c["meaning"] for c in contract["outputs"])
    assert "extra columns are ignored" in contract["input_rules"]
    assert set(contract["status_codes"]) == set(STATUS_CODES) >= {"200", "400", "415"}
    assert json.loads(json.dumps(contract)) == contract  # storable in MLmodel metadata as is


def test_regression_contract_explains_prediction_and_spread():
    output = pd.DataFrame({"prediction": np.array([1.5, 2.0]), "spread": np.array([0.1, 0.3])})
    contract = serving_contract(model_signature(ROWS, output))
    meanings = {c["name"]: c["meaning"] for c in contract["outputs"]}
    assert "mean" in meanings["prediction"] and "standard deviation" in meanings["spread"]


def test_description_renders_every_column_and_status_code():
    output = pd.DataFrame({"proba_0": [0.5, 0.5], "proba_1": [0.5, 0.5], "label": [0, 1]})
    text = describe(serving_contract(model_signature(ROWS, output)))
    for name in ("alcohol", "hue", "proba_0", "proba_1", "label"):
        assert f"`{name}`" in text
    for code in STATUS_CODES:
        assert f"- {code}:" in text


def test_a_signature_without_outputs_is_rejected_naming_the_fix():
    with pytest.raises(ValueError, match="infer_signature"):
        serving_contract(ModelSignature(inputs=model_signature(ROWS, ROWS).inputs))
