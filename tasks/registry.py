"""Prefect task of the registration step: log the pyfunc model, register it under its data's name and move the
champion alias only on improvement over a champion of the same task and input schema."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

import ensemble
from ensemble.data import PreparedData
from ensemble.predictor import EnsemblePredictor
from tasks import pyfunc
from tasks.config import RegistrySection
from tasks.contract import describe, serving_contract
from tasks.describe import decision
from tasks.requirements import inference_requirements
from tasks.tracking import INTEGER_SCHEMA_HINT, Tracker, TrackingSettings

# The library the pyfunc imports travels inside the model (`code/ensemble`): it loads where the project is not
# installed. `tasks` does not travel: inference imports no Prefect and no tracking code.
CODE_PATHS = [str(Path(ensemble.__file__).parent)]
MAX_SCHEMA_TAG = 50_000  # characters of the `input_schema` tag kept as JSON (MLflow allows 100,000 per tag)


@task(name="register-model", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_task(
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    predictor_dir: str,
    metric: str,
    value: float,
    higher_is_better: bool,
    model_name: str,
    evaluation_prefix: str | None = None,
) -> dict:
    """Log the ensemble as an MLflow pyfunc (raw columns in; probabilities + label out) and register it.

    The model carries its code (`CODE_PATHS`), its exact requirements (`tasks.requirements`) and its serving
    contract (`tasks.contract`, also the version's description), so it deploys where the project is not installed.

    The new version of `model_name` (see `registered_model_name`) is tagged with its task and input schema
    (`model_identity`). It gets the champion alias if there is none, or if the champion has the same task and
    schema and the new `test_<metric>` beats the champion's; else, compared, the challenger alias; not compared
    (another task or schema, or a champion without `test_<metric>`), no alias and a `reason`
    (`tasks.tracking.Tracker.register`). The version's description says why it got its alias (or none), with
    its value and the previous champion's, then the serving contract. The logged model is named after the run;
    the run's metrics that start with `evaluation_prefix` (default `test/`) are linked to it as its evaluation.
    Returns `{"name", "version", "alias", "model_uri", "champion_value", "champion_version", "reason",
    "decision"}` (`decision`: that sentence, in Markdown).
    """
    tracker = Tracker(settings)
    prepared = PreparedData.load(data_dir)
    example = input_example(prepared)
    output = EnsemblePredictor.load(predictor_dir).predict(example)
    signature = model_signature(example, output)
    contract = serving_contract(signature)
    model_uri = tracker.log_model(
        run_id,
        pyfunc.__file__,
        {pyfunc.PREDICTOR_ARTIFACT: predictor_dir},
        example,
        signature,
        code_paths=CODE_PATHS,
        pip_requirements=inference_requirements(),
        metadata={"serving_contract": contract},
        evaluation_prefix=evaluation_prefix,
    )
    identity = model_identity(prepared.task, example)
    registered = tracker.register(model_uri, run_id, metric, value, higher_is_better, model_name, identity)
    why = decision(registered, metric, value, higher_is_better)
    tracker.describe_version(registered["name"], registered["version"], f"{why}\n\n{describe(contract)}")
    return {**registered, "model_uri": model_uri, "decision": why}


def model_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """The signature of raw rows `example` -> `output` (the predictor's answer to them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=INTEGER_SCHEMA_HINT)  # `label` is integer by design
        return infer_signature(example, output)


def registered_model_name(registry: RegistrySection, settings: TrackingSettings, source: str) -> str:
    """The name a run registers under: `registry.model_name` if set, else `registered_model_name` of mlflow.yaml
    ($ENSEMBLE_REGISTERED_MODEL) if set, else `data_model_name(source)`: by default, models of different data
    never share a name (and so never a champion)."""
    return registry.model_name or settings.registered_model_name or data_model_name(source)


def data_model_name(source: str) -> str:
    """`<data set>-ensemble`: the file's stem (`/data/wine.csv` -> `wine-ensemble`) or the bundled name
    (`digits` -> `digits-ensemble`), runs of characters other than letters, digits, `_`, `.`, `-` as one `-`."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source).stem).strip("-.")
    return f"{stem or 'data'}-ensemble"


def model_identity(task: str, example: pd.DataFrame) -> dict[str, str]:
    """What a version must share with the champion to be compared with it (`tasks.tracking.COMPARED_TAGS`), as
    version tags: the task and the input schema (the signature's `[column, dtype]` pairs, from `example`)."""
    schema = json.dumps([[column, str(dtype)] for column, dtype in example.dtypes.items()])
    if len(schema) > MAX_SCHEMA_TAG:  # thousands of columns: compared by digest
        schema = "sha256:" + hashlib.sha256(schema.encode()).hexdigest()
    return {"task": task, "input_schema": schema}


def input_example(prepared: PreparedData, rows: int = 3) -> pd.DataFrame:
    """A few raw test rows (feature columns only, as a client would send them), as float64: the model's
    signature then declares double columns, which also accept integers (the reverse would reject floats)."""
    return prepared.raw["test"][prepared.feature_names].head(rows).reset_index(drop=True).astype("float64")
