"""`ensemble train|compare|predict|schedule|deploy|ui`: the command line over the Prefect flows.

Bad input exits with status 2 and one line naming the problem; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from flows.prefect_api import TemporaryServer
    from tasks.config import PipelineConfig
    from tasks.tracking import TrackingSettings

os.environ.setdefault(
    "PREFECT_SERVER_ANALYTICS_ENABLED", "false"
)  # else the temporary server logs a traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Without a server Prefect starts a temporary one; its 20 s default start-up limit is too short on a busy 2-core
# machine with a new PREFECT_HOME (database migrations), and the run then fails before it begins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# One intra-op thread: at small batch sizes TF's CPU kernels split even tiny updates over all threads and wait for
# the slowest; measured here ~3x faster steps for small members (0.07 vs 0.21 ms). Large N x width prefers more
# threads: TF_NUM_INTRAOP_THREADS=0 restores TensorFlow's default (all cores).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one "View run" line per member run
# MLflow's usage telemetry fetches its config from the internet from a background thread; runs stay offline.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def ui_hint(settings: TrackingSettings | None) -> str:
    """Where to browse the runs: the tracking server itself, or `ensemble ui` on a local store (None: the default)."""
    if settings is None:
        from tasks.tracking import DEFAULT_UI_URL

        return f"Open the MLflow UI with `ensemble ui` ({DEFAULT_UI_URL})."
    if settings.tracking_uri.startswith(("http://", "https://")):
        return f"Browse the runs at {settings.ui_address}."
    return f"Open the MLflow UI with `ensemble ui` ({settings.ui_address})."


TIMINGS_ENV = "ENSEMBLE_TIMINGS"
"""A file: the CLI writes its phase edges there as JSON (`benchmarks/bench_startup.py` reads them)."""
FLOW_COMMANDS = ("train", "compare", "predict")  # they run a flow in this process


class PhaseMarks(dict):
    """Wall-clock times (`time.time()`) of the CLI's phase edges, by name; saved to `$ENSEMBLE_TIMINGS` if set."""

    def mark(self, name: str) -> None:
        self[name] = time.time()

    def save(self) -> None:
        if os.environ.get(TIMINGS_ENV):
            Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(self))


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` appends `(default: X)` to each option that has a default, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def config_arguments(parser: argparse.ArgumentParser) -> None:
    from tasks.config import PipelineConfig

    def default(section: str, key: str) -> str:  # the config's default: `PipelineConfig` is its one home
        return f"(default: {getattr(PipelineConfig(), section).model_dump()[key]}, or {section}.{key} of --config)"

    parser.add_argument("--config", help="YAML file with pipeline config sections (data, model, train, ...)")
    parser.add_argument(
        "--data",
        help="CSV/Parquet path or a bundled data set (digits, breast_cancer, wine, blobs) "
        + default("data", "source"),
    )
    parser.add_argument(
        "--target", help="target column of a CSV/Parquet file (default: 'target' of a bundled set)"
    )
    parser.add_argument("--members", type=int, help="ensemble members N " + default("model", "members"))
    parser.add_argument("--epochs", type=int, help="training epochs " + default("train", "epochs"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set model.hidden_units=[64,64] (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # Every subcommand takes `--debug` too (`ensemble train ... --debug`); SUPPRESS: absent there, the value
    # before the subcommand stays.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(
        commands.add_parser, parents=[common], formatter_class=DefaultsHelpFormatter
    )
    train = add_command("train", help="train, evaluate and register an ensemble")
    config_arguments(train)
    resume = train.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this unfinished MLflow run from its checkpoint (default: the unfinished run of the same "
        "config and data whose process died, if any)",
    )
    resume.add_argument("--fresh", action="store_true", help="start a new run even if one could be resumed")
    compare = add_command("compare", help="ensemble vs single models (incl. equal FLOPs), one run each")
    config_arguments(compare)
    compare.add_argument("--grid", action="store_true", help="also run the widths x members grid")
    predict = add_command("predict", help="score a CSV/Parquet file with a registered model alias")
    predict.add_argument("--input", required=True)
    predict.add_argument("--output", required=True, help="file to write: .csv, or .parquet / .pq")
    predict.add_argument("--alias", default="champion", help="model alias to score with")
    predict.add_argument(
        "--model-name",
        help="registered model, e.g. wine-ensemble (default: registered_model_name of mlflow.yaml or "
        "$ENSEMBLE_REGISTERED_MODEL; required when neither is set)",
    )
    schedule = add_command(
        "schedule", help="run the train flow on a schedule (needs a Prefect server: PREFECT_API_URL)"
    )
    config_arguments(schedule)
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='e.g. "0 3 * * *" (03:00 daily)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS seconds")
    schedule.add_argument("--name", default="scheduled-retraining", help="deployment name")
    schedule.add_argument(
        "--no-serve",
        action="store_true",
        help="bind the deployment to a work pool and return; a `prefect worker start --pool POOL` runs it",
    )
    schedule.add_argument("--pool", default="default", help="work pool of --no-serve")
    deploy = add_command(
        "deploy", help="write a Docker build context (Dockerfile + model) serving a registered model alias"
    )
    deploy.add_argument("--dockerfile", required=True, metavar="DIR", help="new or empty directory to write")
    deploy.add_argument("--alias", default="champion", help="model alias to serve")
    deploy.add_argument("--model-name", help="registered model (default: mlflow.yaml)")
    ui = add_command("ui", help="open the MLflow UI on the configured store")
    ui.add_argument("--port", type=int, default=5000, help="port of the UI on 127.0.0.1")
    return parser


def load_pipeline_config(args: argparse.Namespace):
    from tasks.config import load_config, parse_assignment

    overrides: dict[str, Any] = dict(parse_assignment(text) for text in args.set)
    for option, key in (
        ("data", "data.source"),
        ("target", "data.target"),
        ("members", "model.members"),
        ("epochs", "train.epochs"),
    ):
        if getattr(args, option) is not None:
            overrides[key] = getattr(args, option)
    return load_config(args.config, overrides)


def check_data_source(config: PipelineConfig) -> None:
    """What the data's header alone shows wrong (missing file, unknown target or column), as the flow would."""
    from ensemble.data import check_source

    data = config.data
    check_source(data.source, data.target, data.features, tuple(data.drop), data.id_column)


def run(args: argparse.Namespace, marks: PhaseMarks | None = None) -> int:
    marks = PhaseMarks() if marks is None else marks
    config = None
    if args.command in ("train", "compare", "schedule"):
        # A bad value or a data file that cannot be used fails here, in about a second: before TensorFlow,
        # Prefect or MLflow load, before Prefect starts a server and before an MLflow run opens.
        config = load_pipeline_config(args)
        if args.command != "schedule":  # a scheduled run reads its data when it runs
            check_data_source(config)
    if args.command == "schedule":  # nothing would run it: said before the imports below
        from flows.prefect_api import require_server

        require_server()
    if args.command == "deploy":
        from flows.deploy import check_build_directory

        check_build_directory(args.dockerfile)
    if args.command == "predict":  # the same for the files of a prediction
        from ensemble.data import check_input_table, check_output_table

        check_input_table(args.input)
        check_output_table(args.output)
    marks.mark("config")
    if args.command in (*FLOW_COMMANDS, "schedule"):  # before TensorFlow loads: it reads TF_XLA_FLAGS once
        from flows.xla_cache import enable

        enable()
    server = None
    if args.command in FLOW_COMMANDS:  # its start-up overlaps with the imports below (`flows.prefect_api`)
        from flows.prefect_api import TemporaryServer

        server = TemporaryServer.start_if_needed()
        marks.mark("server_started")
    return run_command(args, config, server, marks)


def run_command(
    args: argparse.Namespace, config: PipelineConfig | None, server: TemporaryServer | None, marks: PhaseMarks
) -> int:
    """`run` once the input is checked (and Prefect's temporary server is starting, `server`, if needed)."""
    if not args.debug:
        quiet_runtime()
    from tasks.tracking import TrackingSettings

    command = COMMANDS.get(args.command, run_train)
    return command(args, config, server, marks, TrackingSettings.load())


def run_ui(args, config, server, marks, settings) -> int:
    """`ensemble ui`: the MLflow UI on the configured store (a tracking server already has its own)."""
    if settings.tracking_uri.startswith(("http://", "https://")):
        print(
            f"The store is the tracking server {settings.tracking_uri}: its UI is at {settings.ui_address}."
        )
        return 0
    import signal
    import socket

    with socket.socket() as probe:  # else MLflow prints the address, then fails and exits 0
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError as error:
            raise RuntimeError(
                f"Port {args.port} is in use ({error.strerror}): pass another with --port"
            ) from None
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", settings.tracking_uri, "--host", "127.0.0.1"]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {settings.tracking_uri}); Ctrl-C stops it.")
    # Its own process group, which gets this process's Ctrl-C or `kill`: MLflow's server and job workers end with it.
    ui = subprocess.Popen([*command, "--port", str(args.port)], start_new_session=True)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: os.killpg(ui.pid, signum))
    return ui.wait()


def run_deploy(args, config, server, marks, settings) -> int:
    """`ensemble deploy`: a Dockerfile and the registered model beside it."""
    from flows.deploy import write_dockerfile

    dockerfile = write_dockerfile(args.dockerfile, settings, args.alias, args.model_name)
    print(f"Wrote {dockerfile} and the model beside it; build and run the image with:")
    print(f"  docker build -t fused-ensemble {dockerfile.parent}")
    print("  docker run -p 5001:8080 fused-ensemble   # POST http://127.0.0.1:5001/invocations")
    return 0


def run_predict(args, config, server, marks, settings) -> int:
    """`ensemble predict`: the predict flow on a file of rows."""
    from flows.predict import predict_flow
    from flows.prefect_api import flow_run_settings

    prefect_api_ready(server, marks, settings)
    with flow_run_settings(server):
        result = predict_flow(args.input, args.output, args.alias, args.model_name, settings)
    print(f"Wrote {result['rows']} predictions to {result['output']} ({result['model_uri']}).")
    return 0


def run_schedule(args, config, server, marks, settings) -> int:
    """`ensemble schedule`: a deployment of the train flow on a schedule, served here or run by a worker."""
    from flows.schedule import schedule_training

    when = f"on cron {args.cron!r}" if args.cron else f"every {args.interval:g} s"
    if args.no_serve:
        deployment_id = schedule_training(
            config, args.cron, args.name, False, interval=args.interval, pool=args.pool
        )
        print(
            f"Deployment 'train-ensemble/{args.name}' ({deployment_id}) runs the train flow {when} on work "
            f"pool {args.pool!r}. Start a worker in this project's environment to run it:\n"
            f"  prefect worker start --pool {args.pool}"
        )
        return 0
    with contextlib.suppress(KeyboardInterrupt):  # Prefect's serve pauses the schedule as it stops
        schedule_training(config, args.cron, args.name, True, interval=args.interval)
    print(
        f"Stopped serving 'train-ensemble/{args.name}': its schedule is paused on the Prefect server; "
        "run the same command to serve it again."
    )
    return 0


def run_compare(args, config, server, marks, settings) -> int:
    """`ensemble compare`: ensembles against single models at equal FLOPs."""
    from flows.compare import compare_flow
    from flows.prefect_api import flow_run_settings

    prefect_api_ready(server, marks, settings)
    with flow_run_settings(server):
        result = compare_flow(config, settings, grid={} if args.grid else None)
    print(
        f"\nComparison run {result['run_id']}: child runs tagged comparison={result['run_id']}. {ui_hint(settings)}"
    )
    return 0


def run_train(args, config, server, marks, settings) -> int:
    """`ensemble train`: the train flow, then the closing summary."""
    from flows.prefect_api import flow_run_settings
    from flows.train import train_flow

    prefect_api_ready(server, marks, settings)
    with flow_run_settings(server):
        result = train_flow(config, settings, resume="fresh" if args.fresh else args.resume or "auto")
    marks.mark("flow_returned")
    print(summary(result, settings))
    return 0


COMMANDS = {
    "ui": run_ui,
    "deploy": run_deploy,
    "predict": run_predict,
    "schedule": run_schedule,
    "compare": run_compare,
    "train": run_train,
}


def prefect_api_ready(server: TemporaryServer | None, marks: PhaseMarks, settings: TrackingSettings) -> None:
    """Marks the end of the imports, starts opening the MLflow store on a thread (`open_store_early`: it overlaps
    the wait below and Prefect's creation of the flow run), then waits for Prefect's temporary server (if this
    command started one)."""
    from tasks.tracking import open_store_early

    marks.mark("imports")
    open_store_early(settings)
    if server is not None:
        server.wait_ready()
        marks["server_ready"] = time.time()
    marks.mark("prefect_api")


MEAN_MEMBER = {"accuracy": "mean_member_accuracy", "nll": "mean_member_nll", "rmse": "mean_member_rmse"}


def summary(result: dict, settings: TrackingSettings | None = None) -> str:
    """`ensemble train`'s closing summary: a table of the ensemble's test metrics against its best member's (and
    the members' mean), the registry's decision, the MLflow run (ID and UI address) and how to serve what was
    registered (with the store of `settings` when it is not the default)."""
    import io
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ensemble.evaluation.metrics import METRICS  # the metrics a version is judged on, in registry order

    metrics, best = result["metrics"], result.get("best_member") or {}
    keys = [k for k in METRICS if k in metrics]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("test split")
    for key in keys:
        table.add_column(key, justify="right")
    members = int(metrics.get("num_members", 0)) or len(result["member_run_ids"])
    # A sweep registers its selection; `metrics` are then the uniform ensemble's.
    selection = result.get("selection") or {}
    label = "uniform ensemble" if selection else "ensemble"
    table.add_row(f"{label} ({members} models)" if members else label, *(f"{metrics[k]:.4f}" for k in keys))
    for name, label in (
        ("selected", "selected ensemble (registered)"),
        ("best_configuration", "best configuration"),
    ):
        if name in selection:
            table.add_row(label, *(number(selection[name].get(k)) for k in keys))
    if best:
        table.add_row(f"best member (#{best['member']})", *(number(best.get(k)) for k in keys))
    if any(MEAN_MEMBER.get(k) in metrics for k in keys):
        table.add_row("mean model", *(number(metrics.get(MEAN_MEMBER.get(k, ""))) for k in keys))
    if best:
        gains = (number(metrics[k] - best[k], "+.4f") if best.get(k) is not None else "" for k in keys)
        table.add_row("ensemble - best member", *gains)
    text = io.StringIO()
    width = max(80, shutil.get_terminal_size((100, 24)).columns)
    Console(file=text, width=width, color_system=None, highlight=False).print(table)
    rows = [row.rstrip() for row in text.getvalue().splitlines() if row.strip()]
    runs = f"MLflow run {result['run_id']} ({len(result['member_run_ids'])} member runs)"
    lines = ["", runs, *rows, ""]
    lines += [f"registry: {registry_decision(result.get('registration'))}"]
    if result.get("run_url"):
        lines.append(f"MLflow UI: {result['run_url']}")
    reg = result.get("registration")
    if reg:
        uri = (
            f"models:/{reg['name']}@{reg['alias']}"
            if reg["alias"]
            else f"models:/{reg['name']}/{reg['version']}"
        )
        lines.append("serve it with:")
        lines.append(
            f'  {store_environment(settings)}mlflow models serve -m "{uri}" --env-manager local -p 5001'
        )
    lines.append(ui_hint(settings))
    return "\n".join(lines)


def number(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def registry_decision(registration: dict | None) -> str:
    """What the registry did, in one line: the flow's sentence (`decision`, Markdown markup dropped) or a short one."""
    if registration is None:
        return "not registered (registry.enabled is false)"
    if registration.get("decision"):
        return registration["decision"].replace("**", "").replace("`", "")
    name, version, alias = registration["name"], registration["version"], registration["alias"]
    if alias:
        return f"registered {name} version {version} as @{alias}"
    return f"registered {name} version {version} without an alias: {registration['reason']}"


def store_environment(settings: TrackingSettings | None) -> str:
    """`MLFLOW_TRACKING_URI=... ` (and `MLFLOW_REGISTRY_URI=... `) to put before an `mlflow` command so that it
    finds the models of `settings`; empty for the default store (`TrackingSettings`' default, MLflow's too)."""
    from tasks.tracking import TrackingSettings

    if settings is None:
        return ""
    default = TrackingSettings.tracking_uri  # the dataclass field's default
    names = {"MLFLOW_TRACKING_URI": settings.tracking_uri if settings.tracking_uri != default else None}
    names["MLFLOW_REGISTRY_URI"] = (
        settings.registry_uri if settings.registry_uri != settings.tracking_uri else None
    )
    return "".join(f"{name}={shlex.quote(uri)} " for name, uri in names.items() if uri)


class DropTracebacks(logging.Filter):
    """Keeps Prefect's error lines but not their tracebacks (the CLI prints the cause once itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_runtime() -> None:
    """TensorFlow loaded without its native start-up notes, and Prefect's terminal log handlers without
    tracebacks (the CLI prints the cause once itself). `--debug` skips this."""
    # `import prefect` is lazy and configures no logging; `prefect.main` creates Prefect's log handlers, which
    # must exist now to get the filter. Only the terminal's (stream) handlers get it: Prefect's API handler keeps
    # the tracebacks for the Prefect UI.
    import prefect.main  # noqa: F401

    import ensemble.tensorflow_quietly  # noqa: F401  (CUDA probing notes bypass Python logging)

    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.addFilter(DropTracebacks())


def main(argv: list[str] | None = None) -> int:
    """The `ensemble` command; run as a program (`argv` None), it ends the process itself (`exit_fast`)."""
    marks = PhaseMarks()
    marks.mark("main")
    args = build_parser().parse_args(argv)
    try:
        code = run(args, marks)
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # one line for the user; the whole story with --debug
        if args.debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        code = 2
    finally:
        marks.save()
    if argv is None and "tensorflow" in sys.modules:
        exit_fast(code)
    return code


def exit_fast(code: int) -> NoReturn:
    """Ends the process as `sys.exit(code)` does (other threads finish, the atexit handlers run: Prefect's workers
    send their logs, its temporary server stops, logging flushes), then skips the interpreter's teardown of the
    thousands of modules TensorFlow, MLflow and Prefect loaded: 1-4 s here after every run
    (`benchmarks/bench_startup.py`)."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    # Logging's exit handler, registered first, would run last: after a temporary Prefect server stopped, when
    # Prefect's API log handler then retries for seconds. Flushed now, it sends while the server answers.
    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def one_line(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = []
        for problem in error.errors():  # a check of the whole config names no field
            where, message = ".".join(map(str, problem["loc"])), problem["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return "invalid config: " + "; ".join(problems)
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
