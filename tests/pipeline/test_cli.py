"""`ensemble train|predict`: a good run prints where to look; bad input exits 2 with one readable line and no
traceback, and a data error leaves a FAILED MLflow run and no registered model."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pty
import re
import signal
import socket
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
from tests.pipeline.helpers import cli_in_a_fresh_process
from tests.pipeline.servers import child_env, free_port, wait_healthy

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


def test_cli_train_returns_0_and_closes_with_a_summary_table_the_registry_decision_and_where_to_look(
    tmp_path, tracking, cli_env, capsys
):
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
    table = summary_table(out)
    assert list(table) == [
        "test split",
        "ensemble (2 models)",
        "best member",
        "mean model",
        "ensemble - best member",
    ]
    assert table["test split"] == ["accuracy", "nll", "brier", "ece"]
    metrics = run.data.metrics
    prefix = "test/" if "test/accuracy" in metrics else "test_"  # the metric names of tasks.tracking
    assert table["ensemble (2 models)"] == [f"{metrics[prefix + k]:.4f}" for k in table["test split"]]
    [member] = re.findall(r"best member \(#(\d)\)", out)
    member_runs = {
        int(r.data.params["member"]): r.data.metrics
        for r in runs_of(tracking)
        if r.data.tags.get("kind") == "member"
    }
    best = max(member_runs, key=lambda n: member_runs[n][prefix + "accuracy"])
    assert int(member) == best
    assert table["best member"] == [f"{member_runs[best][prefix + k]:.4f}" for k in table["test split"]]
    gains = [
        float(e) - float(b) for e, b in zip(table["ensemble (2 models)"], table["best member"], strict=True)
    ]
    assert [float(g) for g in table["ensemble - best member"]] == pytest.approx(gains, abs=1.5e-4)
    version = client_of(tracking).get_model_version_by_alias(tracking.registered_model_name, "champion")
    assert version.run_id == run.info.run_id
    [registry] = [line for line in out.splitlines() if line.startswith("registry: ")]
    assert (
        f"{tracking.registered_model_name} version {version.version}" in registry and "@champion" in registry
    )
    assert re.search(rf"^MLflow UI: http://\S+/#/experiments/\d+/runs/{run.info.run_id}\b", out, re.M)
    assert f'mlflow models serve -m "models:/{tracking.registered_model_name}@champion"' in out
    assert "ensemble ui" in out


def summary_table(out: str) -> dict[str, list[str]]:
    """The closing table of `ensemble train`: row label -> cells (the header row under "test split")."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("test split"))
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        if set(line.strip()) <= {"─", "-", " "}:
            continue
        label, *cells = re.split(r"\s{2,}", line.strip())
        rows[re.sub(r" \(#\d+\)$", "", label)] = cells
    return rows


def write_csv(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def frame(x1, x2, y) -> pd.DataFrame:
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


GOOD_X = [float(i) for i in range(20)]
EARLY_DATA_ERRORS = {  # found by the CLI's reading of the data (`check_source`), before Prefect or MLflow start
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
    "nan_values": (
        lambda tmp: [
            "--data",
            write_csv(tmp / "d.csv", frame(GOOD_X[:-1] + [float("nan")], GOOD_X, [0, 1] * 10)),
            "--target",
            "y",
        ],
        ["NaN", "x1"],
    ),
    "text_feature": (
        lambda tmp: [
            "--data",
            write_csv(tmp / "d.csv", frame(["red"] * 20, GOOD_X, [0, 1] * 10)),
            "--target",
            "y",
        ],
        ["must be numeric", "'x1'"],
    ),
}
DATA_ERRORS = {  # found by the flow's data preparation (they need the task and the split)
    "single_class": (
        lambda tmp: ["--data", write_csv(tmp / "d.csv", frame(GOOD_X, GOOD_X, [1] * 20)), "--target", "y"],
        ["single class"],
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


@pytest.mark.parametrize("case", list(EARLY_DATA_ERRORS))
def test_cli_train_with_a_data_error_the_rows_show_exits_2_before_any_run(
    case, tmp_path, tracking, cli_env, capsys
):
    data_args, named = EARLY_DATA_ERRORS[case]
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


def test_a_mistake_between_config_sections_reads_as_one_sentence(tracking, cli_env, capsys):
    """A check of the whole config (here SGDR cycles against the epochs) names no single field: no empty one."""
    assert main(["train", "--data", "wine", "--epochs", "3", "--set", "snapshots.cycle_length=2"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "error: invalid config: snapshots.cycle_length=2")
    assert "Value error" not in err


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


def test_cli_ui_on_a_tracking_server_points_at_it_instead_of_serving_a_store(cli_env, monkeypatch, capsys):
    """`mlflow ui --backend-store-uri http://...` would fail: a tracking server is its own UI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("ENSEMBLE_MLFLOW_UI_URL", "http://mlflow.example.test:8080/")
    assert main(["ui"]) == 0
    assert "its UI is at http://mlflow.example.test:8080." in capsys.readouterr().out


def test_cli_ui_on_a_busy_port_exits_2_naming_it(tmp_path, cli_env, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    assert_one_error_line(capsys.readouterr().err, f"Port {port} is in use")


def test_a_killed_ensemble_ui_takes_the_mlflow_ui_with_it(tmp_path):
    """`kill <pid of ensemble ui>` (SIGTERM, as a service manager stops it) stops MLflow's server and its workers."""
    import psutil

    port = free_port()
    script = str(Path(sys.executable).with_name("ensemble"))
    env = console_env(tmp_path)
    with open(tmp_path / "ui.log", "w") as log:
        ui = subprocess.Popen(
            [script, "ui", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", ui, tmp_path / "ui.log")
        children = psutil.Process(ui.pid).children(recursive=True)
        assert children
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=60)
        assert alive == []
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(ui.pid).children(recursive=True):
                child.kill()
        ui.kill()


def test_cli_predict_with_a_missing_input_file_exits_2_naming_it(tmp_path, cli_env, capsys):
    missing = tmp_path / "rows.csv"
    assert main(["predict", "--input", str(missing), "--output", str(tmp_path / "out.parquet")]) == 2
    assert_one_error_line(capsys.readouterr().err, str(missing))
    assert not (tmp_path / "out.parquet").exists()


def test_cli_predict_input_without_an_extension_is_named_as_a_file_not_a_bundled_data_set(
    tmp_path, cli_env, capsys
):
    assert main(["predict", "--input", "rows", "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "Unsupported file extension '' (rows)")
    assert "bundled" not in err


def test_cli_predict_to_a_file_of_unknown_type_exits_2_naming_it_before_loading_anything(
    tmp_path, cli_env, capsys
):
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n1,2\n")
    assert main(["predict", "--input", str(rows), "--output", str(tmp_path / "out.txt")]) == 2
    assert_one_error_line(capsys.readouterr().err, "'.txt'")
    assert not (tmp_path / "out.txt").exists()


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
    completed = cli_in_a_fresh_process(["train", *args], tmp_path)
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.splitlines()
    assert line.startswith("error: ") and named in line
    assert completed.stdout.split() == loaded
    assert list(tmp_path.iterdir()) == []


def test_a_schedule_without_a_server_and_a_deploy_into_a_full_folder_fail_before_tensorflow_or_mlflow_load(
    tmp_path,
):
    """One line, status 2, in a fresh process: reading Prefect's settings is all a schedule needs to know that
    nothing could run it; the folder check needs nothing."""
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    schedule = cli_in_a_fresh_process(["schedule", "--interval", "60", "--data", "wine"], tmp_path, env)
    assert schedule.returncode == 2, schedule.stderr
    [line] = schedule.stderr.splitlines()
    assert line.startswith("error: ") and "Schedules need a Prefect server" in line
    assert schedule.stdout.split() == ["prefect"]
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "Dockerfile").write_text("FROM scratch\n")
    deploy = cli_in_a_fresh_process(["deploy", "--dockerfile", "image"], tmp_path, env)
    assert deploy.returncode == 2, deploy.stderr
    [line] = deploy.stderr.splitlines()
    assert line.startswith("error: ") and "is not empty" in line
    assert deploy.stdout.split() == []


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


def test_the_summary_of_a_sweep_shows_the_registered_selection_beside_the_uniform_ensemble():
    """A sweep registers its selection; the run's `metrics` are the uniform ensemble's: both rows, named."""
    from flows.cli import summary

    selection = {
        "selected": {"accuracy": 0.95, "nll": 0.2},
        "uniform": {"accuracy": 0.9, "nll": 0.3},
        "best_configuration": {"accuracy": 0.93, "nll": 0.25},
    }
    metrics = {"accuracy": 0.9, "nll": 0.3, "num_members": 4}
    result = {"run_id": "r", "member_run_ids": ["a", "b"], "metrics": metrics, "registration": None}
    rows = summary_table(summary({**result, "selection": selection}))
    assert rows["uniform ensemble (4 models)"] == ["0.9000", "0.3000"]
    assert rows["selected ensemble (registered)"] == ["0.9500", "0.2000"]
    assert rows["best configuration"] == ["0.9300", "0.2500"]
    assert "ensemble (4 models)" in summary_table(summary(result))  # no sweep: one ensemble row, as before


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


def console_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of the installed `ensemble` script run in a fresh process from this checkout."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT__FLOW_RUN_ID")}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])), **extra}


GOOD_RUN = ["train", "--data", "wine", "--members", "2", "--epochs", "2", *TINY]
BAR_CONTROL = ("\x1b[?25l", "━", "steps  ETA")  # the bar hides the cursor, draws, counts steps


def test_console_script_without_a_terminal_prints_plain_epoch_lines_with_an_eta_and_the_summary(
    tmp_path, tracking, cli_env
):
    """Output to pipes (a log file, CI): one line per epoch, no bar drawing; the closing table on stdout."""
    script = str(Path(sys.executable).with_name("ensemble"))
    env = console_env(tmp_path, PREFECT_API_URL=str(get_current_settings().api.url))  # the session's test API
    completed = subprocess.run(
        [script, *GOOD_RUN], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    epochs = re.findall(r"Task run 'train-fused-\w+' - (epoch \d/2 .*)$", completed.stderr, re.M)
    assert [line.split("  loss")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], completed.stderr
    assert re.search(r"  ETA \d+:\d\d$", epochs[0])
    for control in BAR_CONTROL:
        assert control not in completed.stdout + completed.stderr
    assert list(summary_table(completed.stdout))[:2] == [
        "test split",
        "ensemble (4 models)",
    ]  # 2 members x 2 cycles
    [run] = [r for r in runs_of(tracking) if r.data.tags.get("kind") == "ensemble"]
    assert f"MLflow run {run.info.run_id} (2 member runs)" in completed.stdout


def test_console_script_on_a_terminal_draws_a_bar_and_starts_and_stops_prefects_server_itself(
    tmp_path, tracking, cli_env
):
    """On a terminal (a pseudo-terminal here), with no Prefect server configured: a progress bar with an ETA, and
    Prefect's temporary server started at the CLI's edge (before the imports), gone when the command ends."""
    import psutil

    script = str(Path(sys.executable).with_name("ensemble"))
    home, timings = tmp_path / "prefect-home", tmp_path / "timings.json"
    env = console_env(tmp_path, PREFECT_HOME=str(home), ENSEMBLE_TIMINGS=str(timings), COLUMNS="120")
    main_end, sub_end = pty.openpty()
    process = subprocess.Popen(
        [script, *GOOD_RUN], cwd=tmp_path, env=env, stdin=sub_end, stdout=sub_end, stderr=sub_end
    )
    os.close(sub_end)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
        while chunk := os.read(main_end, 65536):
            screen += chunk
    os.close(main_end)
    assert process.wait(timeout=300) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    for control in BAR_CONTROL:
        assert control in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # without colours and cursor moves
    assert re.search(r"training .*\d+/\d+ steps  ETA", plain)
    assert list(summary_table(text.replace("\r", "")))[:2] == ["test split", "ensemble (4 models)"]
    marks = json.loads(timings.read_text())
    assert (
        marks["config"]
        <= marks["server_started"]
        < marks["imports"]
        <= marks["server_ready"]
        <= marks["flow_returned"]
    )

    def serves_this_home(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            if "prefect.server.api.server:create_app" in " ".join(process.cmdline()):
                return process.environ().get("PREFECT_HOME") == str(home)
        return False

    servers = [p for p in psutil.process_iter() if serves_this_home(p)]
    assert servers == []
    # Its flow run is on that temporary server, which has no UI: no link to it (Prefect gives a bare path).
    [run] = [r for r in runs_of(tracking) if r.data.tags.get("kind") == "ensemble"]
    assert "prefect.flow_run_id" in run.data.tags and "prefect.flow_run_url" not in run.data.tags
