"""`ensemble train|predict`: a good run prints where to look; bad input exits 2 with one readable line and no
traceback, and a data error leaves a FAILED MLflow run and no registered model."""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

# Create Prefect's log handlers now, bound to pytest's session-wide stderr: created inside a test by `main`,
# they would keep writing to that test's (then closed) capsys stream.
import prefect.main  # noqa: F401
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.settings import get_current_settings

from flows.cli import build_parser, main
from tasks.config import PipelineConfig

pytestmark = pytest.mark.usefixtures("prefect_api")

TINY = [
    "--set",
    "model.hidden_units=[8,8]",
    "--set",
    "train.batch_size=4",
    "--set",
    "snapshots.cycle_length=1",
]


@pytest.fixture
def cli_env(tmp_path, tracking, monkeypatch):
    """The CLI pointed at the test store through the environment, run from `tmp_path` (no repo mlflow.yaml)."""
    env = {
        "MLFLOW_TRACKING_URI": tracking.tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking.tracking_uri,
        "ENSEMBLE_REGISTERED_MODEL": tracking.registered_model_name,
        "MLFLOW_EXPERIMENT_NAME": tracking.experiment_name,
        "ENSEMBLE_ARTIFACT_LOCATION": tracking.artifact_location,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ENSEMBLE_MLFLOW_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return env


def client_of(tracking) -> MlflowClient:
    return MlflowClient(tracking.tracking_uri, tracking.tracking_uri)


def runs_of(tracking) -> list:
    client = client_of(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment_name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def assert_one_error_line(err: str, *named: str) -> None:
    """The CLI's own output is exactly one `error: ...` line naming the problem, and nothing printed a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for text in named:
        assert text in lines[0]


def test_cli_train_returns_0_and_prints_the_run_id_and_the_ui_hint(tmp_path, tracking, cli_env, capsys):
    code = main(
        ["train", "--data", "wine", "--members", "2", "--epochs", "1", *TINY]
        + ["--set", f"output_dir={tmp_path / 'outputs'}"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    [run] = [r for r in runs_of(tracking) if r.data.tags.get("kind") == "ensemble"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.members"] == "2"
    assert f"MLflow run {run.info.run_id} (2 member runs)" in out
    assert "ensemble ui" in out
    version = client_of(tracking).get_model_version_by_alias(tracking.registered_model_name, "champion")
    assert version.run_id == run.info.run_id
    assert f"models:/{tracking.registered_model_name}@champion" in out


def write_csv(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def frame(x1, x2, y) -> pd.DataFrame:
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


GOOD_X = [float(i) for i in range(20)]
HEADER_ERRORS = {  # found from the file's header, before Prefect or MLflow start
    "missing_file": (lambda tmp: ["--data", "/nonexistent.csv", "--target", "y"], ["/nonexistent.csv"]),
    "unknown_target_column": (
        lambda tmp: [
            "--data",
            write_csv(tmp / "d.csv", frame(GOOD_X, GOOD_X, [0, 1] * 10)),
            "--target",
            "label",
        ],
        ["'label'", "not found"],
    ),
    "unknown_feature_column": (
        lambda tmp: [
            "--data",
            write_csv(tmp / "d.csv", frame(GOOD_X, GOOD_X, [0, 1] * 10)),
            "--target",
            "y",
            "--set",
            "data.features=[x1,x3]",
        ],
        ["features", "'x3'"],
    ),
}
DATA_ERRORS = {  # found once the rows are read, by the flow
    "single_class": (
        lambda tmp: ["--data", write_csv(tmp / "d.csv", frame(GOOD_X, GOOD_X, [1] * 20)), "--target", "y"],
        ["single class"],
    ),
    "nan_values": (
        lambda tmp: [
            "--data",
            write_csv(tmp / "d.csv", frame(GOOD_X[:-1] + [float("nan")], GOOD_X, [0, 1] * 10)),
            "--target",
            "y",
        ],
        ["NaN", "x1"],
    ),
}


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_cli_train_with_bad_data_exits_2_leaves_a_failed_run_and_registers_nothing(
    case, tmp_path, tracking, cli_env, capsys
):
    data_args, named = DATA_ERRORS[case]
    code = main(["train", *data_args(tmp_path), "--members", "2", "--epochs", "1", *TINY])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, *named)
    assert [run.info.status for run in runs_of(tracking)] == ["FAILED"]
    with pytest.raises(MlflowException):
        client_of(tracking).get_registered_model(tracking.registered_model_name)


@pytest.mark.parametrize("case", list(HEADER_ERRORS))
def test_cli_train_with_a_data_error_the_header_shows_exits_2_before_any_run(
    case, tmp_path, tracking, cli_env, capsys
):
    data_args, named = HEADER_ERRORS[case]
    assert main(["train", *data_args(tmp_path), "--members", "2", "--epochs", "1", *TINY]) == 2
    assert_one_error_line(capsys.readouterr().err, *named)
    assert runs_of(tracking) == []


CONFIG_ERRORS = {
    "zero_members": (["--members", "0"], ["model.members", "greater than or equal to 1"]),
    "negative_epochs": (["--set", "train.epochs=-1"], ["train.epochs"]),
    "unknown_key": (["--set", "model.memebrs=3"], ["model.memebrs", "Extra inputs are not permitted"]),
    "set_without_value": (["--set", "model.members"], ["KEY=VALUE"]),
    "missing_config_file": (["--config", "nope.yaml"], ["nope.yaml", "not found"]),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_cli_train_with_a_bad_config_exits_2_before_any_run(case, tracking, cli_env, capsys):
    args, named = CONFIG_ERRORS[case]
    assert main(["train", "--data", "wine", *args]) == 2
    assert_one_error_line(capsys.readouterr().err, *named)
    assert runs_of(tracking) == []


def test_cli_train_with_an_unknown_key_in_a_yaml_section_exits_2_naming_it(
    tmp_path, tracking, cli_env, capsys
):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "wine"}, "model": {"members": 2, "widths": [8]}}))
    assert main(["train", "--config", str(path)]) == 2
    assert_one_error_line(capsys.readouterr().err, "model.widths")
    assert runs_of(tracking) == []


def test_cli_debug_flag_raises_the_error_with_its_traceback(cli_env):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="members"):
        main(["--debug", "train", "--data", "wine", "--members", "0"])


def test_cli_debug_flag_after_the_subcommand_works_like_before_it(cli_env):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="members"):
        main(["train", "--data", "wine", "--members", "0", "--debug"])
    assert build_parser().parse_args(["ui"]).debug is False


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("command", list(subcommand_parsers()))
def test_every_subcommand_help_shows_the_default_of_every_option_that_has_one(command):
    parser = subcommand_parsers()[command]
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, action.option_strings
    if "--members" in text:  # the config's options show the config's defaults
        defaults = PipelineConfig()
        assert f"(default: {defaults.model.members}, or model.members of --config)" in text
        assert f"(default: {defaults.train.epochs}, or train.epochs of --config)" in text


def test_cli_predict_with_a_missing_input_file_exits_2_naming_it(tmp_path, cli_env, capsys):
    missing = tmp_path / "rows.csv"
    assert main(["predict", "--input", str(missing), "--output", str(tmp_path / "out.parquet")]) == 2
    assert_one_error_line(capsys.readouterr().err, str(missing))
    assert not (tmp_path / "out.parquet").exists()


def test_console_script_with_bad_data_prints_one_error_line_and_no_traceback(tmp_path, tracking, cli_env):
    """The installed `ensemble` script in a fresh process (real stderr, Prefect's own log handlers included)."""
    script = str(Path(sys.executable).with_name("ensemble"))
    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),  # the session's test API: no server start
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        ),
    }
    data = write_csv(tmp_path / "d.csv", frame(GOOD_X, GOOD_X, [1] * 20))  # found by the flow: single class
    completed = subprocess.run(
        [script, "train", "--data", data, "--target", "y", "--members", "2", *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 2, completed.stderr
    assert_one_error_line(completed.stderr, "single class")
    assert completed.stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert [run.info.status for run in runs_of(tracking)] == ["FAILED"]


CHEAP_MISTAKES = {  # case -> (arguments, named in the error, slow modules loaded: a bundled set needs sklearn)
    "config": (["--data", "wine", "--members", "0"], "model.members", []),
    "missing_data_file": (["--data", "/nonexistent.csv", "--target", "y"], "/nonexistent.csv", []),
    "unknown_target": (["--data", "wine", "--target", "label"], "'label'", ["sklearn"]),
}


@pytest.mark.parametrize("case", list(CHEAP_MISTAKES))
def test_cli_mistakes_in_config_or_data_header_load_neither_tensorflow_nor_prefect_nor_mlflow(case, tmp_path):
    """In a fresh process: one stderr line, status 2, and none of the slow imports (nor a store written)."""
    args, named, loaded = CHEAP_MISTAKES[case]
    code = (
        "import sys; from flows.cli import main; code = main(sys.argv[1:]); "
        "print(*[m for m in ('tensorflow', 'prefect', 'mlflow', 'sklearn') if m in sys.modules]); sys.exit(code)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, "train", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.splitlines()
    assert line.startswith("error: ") and named in line
    assert completed.stdout.split() == loaded
    assert list(tmp_path.iterdir()) == []


def test_the_cli_keeps_runs_offline_and_quiet_unless_told_otherwise():
    """Defaults the `ensemble` script sets before MLflow, Prefect or TensorFlow load (the environment wins)."""
    code = "import os, flows.cli; print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['TF_NUM_INTRAOP_THREADS'])"
    keys = ("MLFLOW_DISABLE_TELEMETRY", "TF_NUM_INTRAOP_THREADS")
    clean = {k: v for k, v in os.environ.items() if k not in keys}
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert run(env=clean).stdout.split() == ["true", "1"]
    assert run(env={**clean, "TF_NUM_INTRAOP_THREADS": "0"}).stdout.split() == ["true", "0"]


def test_the_printed_serve_command_names_the_store_unless_it_is_the_default():
    from flows.cli import summary
    from tasks.tracking import TrackingSettings

    registration = {"name": "wine-ensemble", "version": "1", "alias": "champion", "reason": ""}
    result = {"run_id": "r", "member_run_ids": [], "metrics": {"accuracy": 1.0}, "registration": registration}
    serve = 'mlflow models serve -m "models:/wine-ensemble@champion"'
    assert f"\n  {serve}" in summary(result, TrackingSettings())
    remote = TrackingSettings(tracking_uri="http://10.0.0.5:5000")
    assert f"\n  MLFLOW_TRACKING_URI=http://10.0.0.5:5000 {serve}" in summary(result, remote)
    apart = TrackingSettings(
        tracking_uri="sqlite:////tmp/my runs.db", registry_uri="sqlite:////tmp/models.db"
    )
    expected = f"\n  MLFLOW_TRACKING_URI='sqlite:////tmp/my runs.db' MLFLOW_REGISTRY_URI=sqlite:////tmp/models.db {serve}"
    assert expected in summary(result, apart)


def test_a_worker_loading_the_train_flow_prints_none_of_tensorflows_native_notes(tmp_path):
    """A Prefect worker's flow run imports `flows.train` (no CLI): TensorFlow loads without its C++ start-up notes."""
    from tests.pipeline.helpers import TF_NATIVE_NOTE

    clean = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    completed = subprocess.run(
        [sys.executable, "-c", "import flows.train, tensorflow; print(tensorflow.constant(2).numpy())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["2"]
    assert not TF_NATIVE_NOTE.search(completed.stderr), completed.stderr
