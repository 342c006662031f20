"""Bad input end to end: every row of the README's bad-input table, through the entry point the user meets.

Config mistakes fail while the config is parsed (before any run exists); data and run-time mistakes fail the
train flow with a message naming the fix, leave its MLflow run FAILED and register nothing; bad rows at predict
time fail the predict flow and write no output. Rows tested elsewhere: `test_cli.py` (missing file, unknown target
column, single class, NaN features, zero members, negative epochs, unknown key), `test_predict_flow.py` (missing
column, unknown alias), `test_serving.py` (4xx from the served model), `test_resume.py` (resuming with another data
order).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from ensemble.data import PreparedData
from flows.predict import predict_flow
from flows.train import train_flow
from tasks.config import load_config
from tests.pipeline.helpers import private_tracking, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 2)).round(3)


def table(path: Path, columns: dict) -> str:
    frame = pd.DataFrame(columns)
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return str(path)


def data_file(tmp: Path, y, **extra) -> str:
    return table(tmp / "data.csv", {"x0": X[: len(y), 0], "x1": X[: len(y), 1], **extra, "y": y})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# row -> (overrides of the tiny config given the test's tmp dir, the message the user sees, as a regex)
TRAIN_ERRORS = {
    "unknown_bundled_name": (
        lambda tmp: {"data.source": "digitz"},
        r"Unknown bundled data set 'digitz'\. Available: \['blobs', 'breast_cancer', 'digits', 'wine'\]",
    ),
    "unsupported_file_type": (
        lambda tmp: {"data.source": write(tmp / "data.json", "{}"), "data.target": "y"},
        r"Unsupported file extension '\.json' .*use one of \('\.csv', '\.parquet', '\.pq'\)",
    ),
    "file_without_target_option": (
        lambda tmp: {"data.source": data_file(tmp, [0, 1] * 20)},
        r"Argument `target` is required for .*data\.csv\. Available columns: \['x0', 'x1', 'y'\]",
    ),
    "ragged_csv_rows": (
        lambda tmp: {"data.source": write(tmp / "data.csv", "x0,y\n1,0\n2,1,7\n"), "data.target": "y"},
        r"Could not read .*data\.csv: Error tokenizing data\. C error: Expected 2 fields in line 3, saw 3",
    ),
    "empty_file": (
        lambda tmp: {"data.source": write(tmp / "data.csv", ""), "data.target": "y"},
        r"Could not read .*data\.csv: No columns to parse from file",
    ),
    "non_numeric_feature": (
        lambda tmp: {
            "data.source": data_file(tmp, [0, 1] * 20, colour=["red", "blue"] * 20),
            "data.target": "y",
        },
        r"Feature columns must be numeric; encode or drop the columns \(dtype\) \{'colour': 'object'\}",
    ),
    "infinite_feature_values": (
        lambda tmp: {"data.source": data_file(tmp, [0, 1] * 20, big=[np.inf, 1.0] * 20), "data.target": "y"},
        r"Feature columns with NaN or inf values \(column: bad rows\): \{'big': 20\}; drop or impute",
    ),
    "missing_labels": (
        lambda tmp: {"data.source": data_file(tmp, [0, 1, None, 1] * 10), "data.target": "y"},
        r"Target column 'y' has 10 rows with NaN or inf; drop them",
    ),
    "too_few_rows": (
        lambda tmp: {"data.source": data_file(tmp, [0, 1, 0, 1, 0]), "data.target": "y"},
        r"Too few rows to split: the data has 5 rows; at least \d+ are needed for >= 2 row\(s\) per split",
    ),
    "class_with_one_row": (
        lambda tmp: {"data.source": data_file(tmp, [0, 1] * 19 + [0, 2]), "data.target": "y"},
        r"Class 2 has 1 rows to split; need >= 3, one per split",
    ),
    "binary_task_for_three_classes": (
        lambda tmp: {"data.task": "binary"},
        r"task='binary' needs 2 classes; 'target' has 3\. Use 'multiclass'",
    ),
    "regression_metric_for_classes": (
        lambda tmp: {"evaluation.metric": "rmse"},
        r"evaluation\.metric='rmse' is a regression metric but the data is a multiclass task; use accuracy",
    ),
    "selection_metric_for_the_other_task": (
        lambda tmp: {
            "model.members": 2,
            "sweep.learning_rate": [0.01, 0.02],
            "sweep.selection_metric": "rmse",
        },
        r"`selection_metric='rmse'` is a regression metric but the data is a multiclass task; use one of "
        r"\('accuracy', 'nll', 'brier'\) \(or leave it unset: nll\)",
    ),
    "batch_larger_than_training_rows": (
        lambda tmp: {"train.batch_size": 1000, "snapshots.enabled": False},
        r"`x_train` has 124 rows, fewer than batch_size=1000",
    ),
}
if importlib.util.find_spec("prefect_ray") is None:
    TRAIN_ERRORS["ray_runner_not_installed"] = (
        lambda tmp: {"train.members_per_shard": 2, "runner.kind": "ray"},
        r"runner\.kind='ray' needs prefect-ray: pip install 'fused-ensembles\[ray\]'",
    )


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_bad_training_input_fails_the_run_with_a_message_naming_the_fix(case, tmp_path, tracking):
    overrides, message = TRAIN_ERRORS[case]
    with pytest.raises(Exception, match=message):
        train_flow(tiny_config(tmp_path, **overrides(tmp_path)), tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "tags.kind = 'ensemble'"
    )
    assert [run.info.status for run in runs] == ["FAILED"]
    with pytest.raises(MlflowException):
        client.get_registered_model(tracking.registered_model_name)


CONFIG_ERRORS = {  # rejected while parsing: no run is started
    "unknown_optimizer": ({"optimizer.name": "adamw"}, r"optimizer\.name\n  Input should be 'adam' or 'sgd'"),
    "member_coupling_option": (
        {"optimizer.clipnorm": 1.0},
        r"optimizer\.clipnorm\n  Extra inputs are not permitted",
    ),
    "momentum_not_below_one": (
        {"optimizer.momentum": 1.5},
        r"optimizer\.momentum\n  Input should be less than 1",
    ),
    "zero_learning_rate": (
        {"optimizer.learning_rate": 0},
        r"optimizer\.learning_rate\n  Input should be greater than 0",
    ),
    "hidden_units_not_a_list": (
        {"model.hidden_units": 32},
        r"model\.hidden_units\n  Input should be a valid list",
    ),
    "unknown_activation": ({"model.activation": "relux"}, r"unknown activation 'relux'; use one of \['elu'"),
    "zero_members_per_shard": (
        {"train.members_per_shard": 0},
        r"train\.members_per_shard\n  Input should be greater than or equal to 1",
    ),
    "unknown_runner": (
        {"runner.kind": "spark"},
        r"runner\.kind\n  Input should be 'thread', 'dask' or 'ray'",
    ),
    "address_for_the_thread_pool": (
        {"runner.address": "tcp://10.0.0.5:8786"},
        r"runner\.address is only used with kind 'dask' or 'ray'",
    ),
    "unknown_mixed_precision_policy": (
        {"train.mixed_precision": "float8"},
        r"train\.mixed_precision\n  Input should be 'mixed_float16' or 'mixed_bfloat16'",
    ),
    "epochs_end_inside_an_sgdr_cycle": (
        {"train.epochs": 3, "snapshots.cycle_length": 2},
        r"snapshots\.cycle_length=2 \(x1 per cycle\) does not fit train\.epochs=3: the run would end inside SGDR "
        r"cycle 1 \(0-based\), which would yield no snapshot\. Set train\.epochs to 2 or 4, or remove "
        r"snapshots\.cycle_length",
    ),
    "fractions_leave_no_training_rows": (
        {"data.val_fraction": 0.5, "data.test_fraction": 0.5},
        r"val_fraction \+ test_fraction must be < 1 to leave training rows",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_config_is_rejected_at_parse_time_naming_the_key(case):
    overrides, message = CONFIG_ERRORS[case]
    with pytest.raises(ValidationError, match=message):
        load_config(overrides=overrides)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, migrated_store, prefect_api):
    """A champion trained on wine (1 epoch) in a private store: `(settings, raw test rows, features only)`."""
    root = tmp_path_factory.mktemp("bad-input")
    settings = private_tracking(root, migrated_store)
    train_flow(tiny_config(root, **{"train.epochs": 1}), settings)
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    return settings, prepared.raw["test"][prepared.feature_names].reset_index(drop=True)


# The registered pyfunc enforces its input schema first: MLflow's message ends with the reason ("Error: ..."),
# after a dump of the rows. The patterns also accept the predictor's own DataError wording.
PREDICT_ERRORS = {  # row -> (how the rows are spoiled, the message)
    "renamed_columns": (
        lambda rows: rows.rename(columns=str.upper),
        r"(?i)missing (inputs|feature columns) \['alcohol', 'malic_acid'",
    ),
    "text_in_a_feature": (
        lambda rows: rows.assign(alcohol=["high"] * len(rows)),
        r"Failed to convert column alcohol from type object to DataType\.double|must be numeric.*'alcohol'",
    ),
    "missing_values": (lambda rows: rows.assign(magnesium=np.nan), r"NaN or inf values.*'magnesium'"),
}


@pytest.mark.parametrize("case", list(PREDICT_ERRORS))
def test_bad_rows_at_predict_time_fail_naming_the_column_and_write_nothing(case, tmp_path, registered):
    settings, rows = registered
    spoil, message = PREDICT_ERRORS[case]
    source, output = tmp_path / "rows.parquet", tmp_path / "predictions.parquet"
    spoil(rows).to_parquet(source, index=False)
    with pytest.raises(Exception, match=message):
        predict_flow(str(source), str(output), "champion", None, settings)
    assert not output.exists()


def test_predict_input_of_an_unsupported_type_is_named(tmp_path, registered):
    settings, rows = registered
    source = Path(write(tmp_path / "rows.json", rows.to_json()))
    with pytest.raises(
        Exception, match=r"Unsupported file extension '\.json' .*rows\.json.*use one of \('\.csv'"
    ):
        predict_flow(str(source), str(tmp_path / "out.parquet"), "champion", None, settings)
