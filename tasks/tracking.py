"""All MLflow traffic of the pipeline: settings from `mlflow.yaml` + environment, runs opened and closed by id,
batched metric/param logging, artifacts, the dataset input, the pyfunc model and the registry aliases.

MLflow's active run is thread-local and Prefect runs tasks in worker threads, so nothing here relies on it: every
call names its `run_id` and goes through one `MlflowClient`. The exceptions are `log_model` and `load_model`, which
MLflow only offers through the fluent API: they point its module-level URIs at this tracker's store (no run is
activated).

Live training curves go through MLflow 3's asynchronous logging (`log_batch(..., synchronous=False)`: a queue and
worker threads inside MLflow, one worker for a SQLite store, whose writers would only wait for each other's lock);
`flush_async` drains it and raises the first failed write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.entities import LoggedModelOutput, Metric, Param, RunStatus, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations
from mlflow.utils.time import get_current_time_millis

from ensemble.evaluation.plots import plot_learning_rate
from tasks.requirements import prepare_requirement_checks
from tasks.sqlite_wal import use_wal

SETTINGS_FILE_ENV = "ENSEMBLE_MLFLOW_CONFIG"
ENV_OVERRIDES = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "registry_uri": "MLFLOW_REGISTRY_URI",
    "artifact_location": "ENSEMBLE_ARTIFACT_LOCATION",
    "experiment_name": "MLFLOW_EXPERIMENT_NAME",
    "registered_model_name": "ENSEMBLE_REGISTERED_MODEL",
    "lr_points": "ENSEMBLE_LR_POINTS",
    "ui_url": "ENSEMBLE_MLFLOW_UI_URL",
}
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # `ensemble ui` / `mlflow ui` on a local store
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on training runs
DESCRIPTION_TAG = "mlflow.note.content"  # a run's markdown description in the UI
UI_WORKFLOW = "workflowType=machine_learning"  # the UI's "Model training" view (see `Tracker.experiment_url`)
ASYNC_WORKERS_ENV = "MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE"
MAX_PARAM_LENGTH = 6000
INTEGER_SCHEMA_HINT = "Hint: Inferred schema contains integer column"


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs, artifacts and registered models go. Defaults = the embedded `mlflow.yaml`."""

    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    # Where a NEW experiment stores artifacts; None: `./mlartifacts` beside a local store (sqlite://, a path), the
    # server's own artifact store (proxied, `mlflow-artifacts:`) behind an http(s) tracking URI.
    artifact_location: str | None = None
    experiment_name: str = "fused-ensembles"
    # None: each run registers as `<data set>-ensemble` (`tasks.registry.registered_model_name`).
    registered_model_name: str | None = None
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    # The most points of the `schedule/lr` metric per run; the exact per-step curve is an artifact (`tasks.lr_curve`).
    lr_points: int = 1000
    # Where the MLflow UI serves this store, for links (None: the tracking URI if it is http(s), else DEFAULT_UI_URL).
    ui_url: str | None = None

    def __post_init__(self):
        try:
            points = int(self.lr_points)
        except (TypeError, ValueError):
            points = None
        if points is None or points < 10 or str(points) != str(self.lr_points).strip():
            raise ValueError(
                f"MLflow setting `lr_points` must be an integer >= 10. Received: lr_points={self.lr_points!r}"
            )
        object.__setattr__(self, "lr_points", points)  # from the environment it arrives as a string
        if self.ui_url is not None and not str(self.ui_url).startswith(("http://", "https://")):
            raise ValueError(
                f"MLflow setting `ui_url` must start with http:// or https://. Received: ui_url={self.ui_url!r}"
            )

    @property
    def ui_address(self) -> str:
        """The MLflow UI's address for links: `ui_url`, else an http(s) tracking URI, else DEFAULT_UI_URL."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return DEFAULT_UI_URL

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] = os.environ
    ) -> TrackingSettings:
        """Defaults <- YAML file (`path`, `$ENSEMBLE_MLFLOW_CONFIG` or `./mlflow.yaml` if present) <- environment."""
        path = (
            path
            or environ.get(SETTINGS_FILE_ENV)
            or ("mlflow.yaml" if Path("mlflow.yaml").is_file() else None)
        )
        values: dict[str, Any] = {}
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"MLflow settings file not found: {path}")
            values = yaml.safe_load(Path(path).read_text()) or {}
            unknown = set(values) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(
                    f"Unknown keys in {path}: {sorted(unknown)}. Known: {[f.name for f in fields(cls)]}"
                )
        values.update({key: environ[env] for key, env in ENV_OVERRIDES.items() if environ.get(env)})
        return cls(**values)


_opening: dict[str, threading.Event] = {}  # tracking URI -> set once `open_store_early` has opened its store


def open_store_early(settings: TrackingSettings) -> None:
    """Open the store of `settings` on a thread, now, then prepare model logging's requirement checks.

    For a process about to wait on something else: the CLI calls it before its flow starts, so it runs while
    Prefect creates the flow run (an HTTP round trip to its server, during which this process only waits).
    Opening the store (MLflow's engine, its schema check or, for a new store, its migrations, and the experiment)
    is about half a second of a small run. The first `Tracker` of the same store waits until the thread has opened
    it and takes it from MLflow's cache: made beside the thread, it would build a second store after the first
    (MLflow builds one at a time) and pay the opening twice. A failure is left to that `Tracker`, which meets it
    again and raises it where it belongs. Then the thread builds what MLflow's first model logging would
    (`tasks.requirements.prepare_requirement_checks`), beside the run's first steps; nothing waits for that.
    """
    uri = settings.tracking_uri
    if uri in _opening:
        return
    opened = _opening[uri] = threading.Event()

    def prepare() -> None:
        try:
            with contextlib.suppress(Exception):
                Tracker(settings, early=True).experiment_id()
        finally:
            opened.set()
        prepare_requirement_checks()

    threading.Thread(target=prepare, name="mlflow-open-store", daemon=True).start()


class Tracker:
    """One MLflow client for one store; every method takes the run it writes to."""

    def __init__(self, settings: TrackingSettings | None = None, early: bool = False):
        self.settings = settings or TrackingSettings.load()
        if not early and (opening := _opening.pop(self.settings.tracking_uri, None)) is not None:
            opening.wait()  # `open_store_early`
        # The registry URI is always explicit: MlflowClient would otherwise take the process-wide default.
        self.registry_uri = self.settings.registry_uri or self.settings.tracking_uri
        for uri in (self.settings.tracking_uri, self.registry_uri):  # before MLflow opens a SQLite store
            use_wal(uri)  # WAL mode, synchronous=NORMAL (`tasks.sqlite_wal`)
        self.client = MlflowClient(self.settings.tracking_uri, self.registry_uri)
        self._experiment_id: str | None = None  # looked up (or created) once per Tracker

    # -- runs ---------------------------------------------------------------------------------------------------
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._find_or_create_experiment()
        return self._experiment_id

    def _find_or_create_experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.settings.experiment_name)
        if experiment is not None:
            if not EXPERIMENT_KIND.items() <= experiment.tags.items():  # made before the tag existed
                for key, value in EXPERIMENT_KIND.items():
                    self.client.set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        location = self.settings.artifact_location
        if location is None and not self.settings.tracking_uri.startswith(("http://", "https://")):
            location = "./mlartifacts"
        if location and "://" not in location:
            location = Path(location).resolve().as_uri()
        try:
            return self.client.create_experiment(
                self.settings.experiment_name, artifact_location=location, tags=EXPERIMENT_KIND
            )
        except MlflowException:  # created concurrently by another flow
            return self.client.get_experiment_by_name(self.settings.experiment_name).experiment_id

    def start_run(
        self, run_name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None
    ) -> str:
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        return run.info.run_id

    def describe_run(self, run_id: str, markdown: str) -> None:
        """The run's description (Markdown, shown on its Overview page)."""
        self.set_tags(run_id, {DESCRIPTION_TAG: markdown})

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run as FINISHED, FAILED or KILLED (now, as its end time).

        Through the store's `update_run_info`, which is what `MlflowClient.set_terminated` does after stopping
        MLflow's asynchronous logging (`stop_async`): that stop waits up to a second, so it is done once, where it
        costs nothing (the evaluate step, beside its predictions) or at the end of `run`. Writes queued with
        `log_metrics_async` are not waited for here: wait on their operations first (`flush_async`), as
        `MlflowEpochLogger.flush` does."""
        self.client._tracking_client.store.update_run_info(
            run_id, RunStatus.from_string(status), end_time=get_current_time_millis(), run_name=None
        )

    # -- run lifecycle ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, run_id: str, nested: str | None = None) -> Iterator[str]:
        """Close the started run `run_id` when the block ends: FINISHED, or FAILED if the block raised (anything,
        a cancellation too; the error propagates). With `nested` (a `child_runs` kind, e.g. "member"), its nested
        runs of that kind close with it, as they stand then: those still RUNNING as FINISHED (a step may have
        closed them already, `finish_run`), or after a failure every one of them as FAILED, those a step
        had closed FINISHED too.

        Usage: `with tracker.run(tracker.start_run(name, tags)) as run_id: ...`.
        """
        try:
            yield run_id
        except BaseException:
            self._finish_with_nested(run_id, nested, "FAILED")
            raise
        self._finish_with_nested(run_id, nested, "FINISHED")

    def _finish_with_nested(self, run_id: str, nested: str | None, status: str) -> None:
        self.stop_async()  # a no-op if stopped already: in a flow, the evaluate step has done it
        for child in self._child_runs(run_id, nested) if nested else ():
            if status != "FINISHED" or child.info.status == "RUNNING":
                self.finish_run(child.info.run_id, status)
        self.finish_run(run_id, status)

    def reopen_run(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Continue a run (status RUNNING again, no end time) under new owner `tags`; its children too."""
        for run in (run_id, *self.unfinished_children(run_id, include_failed=True)):
            self.client.update_run(run, status="RUNNING")
        self.set_tags(run_id, tags)

    def unfinished_runs(self) -> list:
        """The experiment's RUNNING top-level runs, newest first."""
        runs = self.client.search_runs(
            [self.experiment_id()], filter_string="attributes.status = 'RUNNING'", max_results=50_000
        )
        return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]

    def unfinished_children(self, parent_run_id: str, include_failed: bool = False) -> list[str]:
        """The nested runs of `parent_run_id` not FINISHED (RUNNING; also FAILED/KILLED with `include_failed`)."""
        statuses = ("RUNNING", "FAILED", "KILLED") if include_failed else ("RUNNING",)
        runs = self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=50_000,
        )
        return [run.info.run_id for run in runs if run.info.status in statuses]

    def latest_steps(self, run_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """The last step logged of each metric of each run (`{run_id: {key: step}}`), as the store keeps it."""
        return {
            run_id: {m.key: m.step for m in self.client.get_run(run_id).data._metric_objs}
            for run_id in run_ids
        }

    def open_child_runs(
        self,
        parent_run_id: str,
        kind: str,
        params: Mapping[int, Mapping[str, Any]],
        log_params: bool = True,
    ) -> list[str]:
        """The nested runs of `parent_run_id` tagged `kind` = each index of `params`, opened with those params
        if not open yet; in the order of `params`.

        Idempotent: a retried or resumed task finds the runs its earlier attempt opened (their params are not
        logged again). Tags: `kind` and `<kind>` = the index, as `child_runs` finds them. `log_params=False`
        opens the runs without their params, which the caller logs (`log_metrics_async(..., params=...)`, with
        its first values: one write per run instead of two).
        """
        existing = self.child_runs(parent_run_id, kind)
        run_ids = []
        digits = max(2, len(str(max(params, default=0))))
        for index, values in params.items():  # created in index order
            if index not in existing:
                existing[index] = self.start_run(
                    f"{kind}-{index:0{digits}d}",
                    tags={"kind": kind, kind: str(index)},
                    parent_run_id=parent_run_id,
                )
                if log_params:
                    self.log_params(existing[index], values)
            run_ids.append(existing[index])
        return run_ids

    def child_runs(self, parent_run_id: str, kind: str) -> dict[int, str]:
        """The nested runs of `parent_run_id` tagged `kind` (e.g. "member"), by their integer `kind` tag."""
        return {int(run.data.tags[kind]): run.info.run_id for run in self._child_runs(parent_run_id, kind)}

    def _child_runs(self, parent_run_id: str, kind: str) -> list:
        return self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.kind = '{kind}'",
            max_results=50_000,
        )

    # -- values -------------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Nested dicts are flattened with dots (`model.members`); values are stringified."""
        flat = [Param(key, _param_value(value)) for key, value in flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start : start + 100], synchronous=True)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metrics_at_steps(run_id, {step: metrics})

    def log_metrics_at_steps(self, run_id: str, metrics: Mapping[int, Mapping[str, float]]) -> None:
        """Metrics of several steps (`{step: {key: value}}`) in batched requests; non-finite values are dropped."""
        now = get_current_time_millis()
        batch = [
            Metric(key, float(value), now, int(step))
            for step, values in metrics.items()
            for key, value in values.items()
            if _finite(value)
        ]
        self.log_metric_batch(run_id, batch)

    def log_series(self, run_id: str, key: str, values: Iterable[float], steps: Iterable[int]) -> None:
        """One metric key at many steps, in batched requests."""
        now = get_current_time_millis()
        self.log_metric_batch(
            run_id, [Metric(key, float(v), now, int(s)) for v, s in zip(values, steps, strict=True)]
        )

    def log_metric_batch(self, run_id: str, metrics: list[Metric]) -> None:
        """`log_batch` in chunks of 1000 metrics (MLflow's per-request limit)."""
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)

    def log_metrics_async(
        self,
        batches: Mapping[str, list[Metric]],
        params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[RunOperations]:
        """Queue metrics of several runs (`{run_id: [Metric, ...]}`), and `params` of some (`{run_id: {key:
        value}}`, flattened as `log_params` does; logging a param again with the same value is allowed), on
        MLflow's asynchronous logging: one `log_batch` per run (MLflow splits it into requests within its limits).
        Returns the pending operations (`wait()` raises a failed write). Nothing is written before `flush_async`
        unless MLflow's worker gets to it first."""
        if self.settings.tracking_uri.startswith("sqlite"):
            os.environ.setdefault(ASYNC_WORKERS_ENV, "1")  # read when MLflow starts its workers
        params = params or {}
        return [
            self.client.log_batch(
                run_id,
                metrics=batches.get(run_id, []),
                params=[Param(k, _param_value(v)) for k, v in flatten(params.get(run_id, {})).items()],
                synchronous=False,
            )
            for run_id in {**batches, **params}
        ]

    def flush_async(self, operations: Iterable[RunOperations] | None = None) -> None:
        """Wait until queued writes are done: those of `operations` (raising the first failed one), or with None
        everything queued on this client's store.

        Waiting on the operations is what `mlflow.flush_async_logging()` amounts to for them, without its cost:
        a flush stops and restarts MLflow's logging thread, which notices the stop only at its next 1-second poll
        of an empty queue. `mlflow.flush_async_logging()` itself drains the fluent API's store
        (`$MLFLOW_TRACKING_URI`), which this tracker never sets: None drains this client's own store instead.
        """
        if operations is None:
            self.client._tracking_client.store.flush_async_logging()
            return
        for operation in operations:
            operation.wait()

    def stop_async(self) -> None:
        """Stop MLflow's asynchronous logging to this store: write what is queued, then end its threads.

        It has to be stopped before a process ends: its worker pool's threads are not daemons, and the CLI's
        `exit_fast` waits for every such thread before it runs the exit handlers (MLflow's would stop them). The
        stop waits for the logging thread's next 1-second poll of its queue; a no-op when stopped already, and
        the next `log_metrics_async` starts it again. Nothing may queue writes to this store meanwhile (one flow
        at a time per process does not: its live logging is flushed when training ends)."""
        self.client._tracking_client.store.shut_down_async_logging()

    # -- artifacts ----------------------------------------------------------------------------------------------
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        """A table (list of row dicts) as an MLflow table artifact (visible in the UI's artifact viewer)."""
        self.client.log_table(run_id, pd.DataFrame(rows), artifact_file)

    def log_datasets(
        self, run_id: str, frames: Mapping[str, pd.DataFrame], name: str, source: str, target: str
    ) -> None:
        """Record each of `frames` (by context: `train`, `val`, `test`) as an MLflow dataset input of the run,
        named `<name>-<context>` (name, digest, schema, source), in one `log_inputs` call."""
        with (
            warnings.catch_warnings()
        ):  # MLflow registers its local source twice; integer columns are fine here
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            warnings.filterwarnings("ignore", message=INTEGER_SCHEMA_HINT)
            inputs = [
                mlflow.entities.DatasetInput(
                    # The schema is inferred in `_to_mlflow_entity` (lazily).
                    dataset=mlflow.data.from_pandas(
                        frame, source=source, targets=target, name=f"{name}-{context}"
                    )._to_mlflow_entity(),
                    tags=[mlflow.entities.InputTag("mlflow.data.context", context)],
                )
                for context, frame in frames.items()
            ]
        self.client.log_inputs(run_id, datasets=inputs)

    # -- models -------------------------------------------------------------------------------------------------
    def log_model(
        self,
        run_id: str,
        python_model: str,
        artifacts: dict[str, str],
        input_example: pd.DataFrame,
        signature: mlflow.models.ModelSignature,
        *,
        code_paths: list[str] | None = None,
        pip_requirements: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        evaluation_prefix: str | None = None,
    ) -> str:
        """Log a pyfunc model ("model from code": `python_model` is the path of the file that calls
        `mlflow.models.set_model`) with signature and input example as the output of `run_id`; returns its URI.

        `code_paths` (files or packages copied into the model's `code/`, which MLflow puts on `sys.path` at load
        time) and `pip_requirements` (the model's `requirements.txt`; None lets MLflow pin only itself) make it
        load where the project is not installed; `metadata` lands in the model's `MLmodel` file; `name` is the
        logged model's name (default: the run's name, as far as MLflow allows its characters).

        The model is created for the run (`initialize_logged_model`, with the run's params) and logged without
        activating the run: with the run active, MLflow's `log_model` reads back the whole history of every
        metric of the run to link their step-0 values to the model, which for the per-step learning rate of a
        50-member, 30-epoch run (37,710 points) took 1.6 s of a 1.8 s call. The model is then linked to the
        run as its output, and the run's metrics that start with `evaluation_prefix` (the model's evaluation;
        default `test/`; a sweep registers its selection, whose scores are `selection/selected_test_*`) to the model.
        """
        self._use_fluent_uris()
        run = self.client.get_run(run_id)
        name = name or logged_model_name(run.info.run_name)
        model = mlflow.initialize_logged_model(
            name=name,
            source_run_id=run_id,
            params=dict(run.data.params),
            experiment_id=run.info.experiment_id,
        )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=artifacts,
            code_paths=code_paths,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            metadata=metadata,
            model_id=model.model_id,
        )
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        evaluation = [  # their last values (the evaluation logs each once), as read above: no query per key
            Metric(m.key, m.value, m.timestamp, m.step, run_id=run_id, model_id=model.model_id)
            for m in run.data._metric_objs
            if m.key.startswith(evaluation_prefix or TEST_PREFIX)
        ]
        if evaluation:
            self.client.log_batch(run_id, metrics=evaluation, synchronous=True)
        return info.model_uri

    def describe_version(self, name: str, version: str, description: str) -> None:
        """Set a registered model version's description (Markdown in the registry UI)."""
        self.client.update_model_version(name, version, description=description)

    def register(
        self,
        model_uri: str,
        run_id: str,
        metric: str,
        value: float,
        higher_is_better: bool,
        name: str,
        identity: Mapping[str, str],
    ) -> dict[str, Any]:
        """Register `model_uri` as a new version of `name`, tagged with `identity` (what it must share with the
        champion to be compared: `COMPARED_TAGS`, e.g. task and input schema) and its `test_<metric>`.

        The champion alias moves to the new version if there is no champion, or if the champion shares its
        identity and the new `value` beats the champion's `test_<metric>`; a compared version that does not beat
        it gets the challenger alias. A champion of another identity, or without `test_<metric>`, is not compared:
        no alias moves, and the version (tag `not_compared`) and the run (tag `registration_note`) say why.

        Returns:
            `{"name", "version", "alias", "champion_value", "champion_version", "reason"}`: `alias` is the
            champion or challenger alias, or None when not compared (`reason` then says why; else None);
            `champion_*` describe the champion before this registration (None: there was none).
        """
        champion = self._champion(name)
        champion_value = None if champion is None else self._version_metric(champion, metric)
        reason = None if champion is None else comparison_blocker(champion, identity, metric, champion_value)
        tags = {**identity, "gating_metric": metric, f"test_{metric}": str(value)}
        version = self.client.create_model_version(
            name=self._ensure_registered(name),
            source=model_uri,
            run_id=run_id,
            tags={**tags, "not_compared": reason} if reason else tags,
            # A tracking server (REST store) accepts a `models:/<model_id>` source only with its model id.
            model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None,
        ).version
        alias = None
        if reason is None:
            better = champion_value is None or (
                value > champion_value if higher_is_better else value < champion_value
            )
            alias = self.settings.champion_alias if better else self.settings.challenger_alias
            self._set_alias(name, alias, version)
        run_tags = {
            "registered_model": name,
            "registered_version": version,
            "registered_alias": alias or "none",
        }
        self.set_tags(run_id, {**run_tags, "registration_note": reason} if reason else run_tags)
        return {
            "name": name,
            "version": str(version),
            "alias": alias,
            "champion_value": champion_value,
            "champion_version": None if champion is None else str(champion.version),
            "reason": reason,
        }

    def _set_alias(self, name: str, alias: str, version: str, attempts: int = 3) -> None:
        """Point `alias` at `version`. The store upserts an alias in two statements, so two flows registering at
        once can both try to insert it and one fails (seen with PostgreSQL: UniqueViolation); the upsert is
        idempotent, so it is simply re-issued (it then updates), instead of the whole registration being retried
        by Prefect, which would log and register the model a second time."""
        for attempt in range(attempts):
            try:
                self.client.set_registered_model_alias(name, alias, version)
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise

    def load_model(self, alias: str, name: str | None = None):
        """The registered pyfunc `models:/<name>@<alias>` (`name`: see `model_name`), loaded in-process."""
        self._use_fluent_uris()
        return mlflow.pyfunc.load_model(f"models:/{self.model_name(name)}@{alias}")

    def _use_fluent_uris(self) -> None:
        """Point MLflow's module-level API (needed by `log_model`/`load_model`) at this tracker's store.

        `mlflow.set_tracking_uri`/`set_registry_uri` also export `MLFLOW_TRACKING_URI`/`MLFLOW_REGISTRY_URI` into the
        process environment, where `TrackingSettings.load()` (environment beats `mlflow.yaml`) and every child
        process would then find this store instead of their own settings: the environment is left as it was.
        """
        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def champion_metric(self, name: str, metric: str) -> float | None:
        """The champion version's test metric, or None if there is no champion yet (or it lacks the metric)."""
        champion = self._champion(name)
        return None if champion is None else self._version_metric(champion, metric)

    def _champion(self, name: str) -> ModelVersion | None:
        """The version of `name` holding the champion alias, or None (no such model or alias)."""
        try:
            return self.client.get_model_version_by_alias(name, self.settings.champion_alias)
        except MlflowException:
            return None

    def _version_metric(self, version: ModelVersion, metric: str) -> float | None:
        """`test_<metric>` of a version: its tag, else its run's metric (`test/<metric>`, or `test_<metric>` as runs
        logged it before the metric names were grouped); None if none has it."""
        tagged = version.tags.get(f"test_{metric}")
        if tagged is not None:
            return float(tagged)
        metrics = self.client.get_run(version.run_id).data.metrics
        return metrics.get(f"{TEST_PREFIX}{metric}", metrics.get(f"test_{metric}"))

    def model_name(self, name: str | None = None) -> str:
        """`name`, else `registered_model_name` (mlflow.yaml / $ENSEMBLE_REGISTERED_MODEL).

        Raises:
            ValueError: neither is set (training derives the name from its data; a reader has to be told it); the
                message lists the registered models.
        """
        if name or self.settings.registered_model_name:
            return name or self.settings.registered_model_name
        registered = sorted(model.name for model in self.client.search_registered_models())
        raise ValueError(
            "Which registered model? Pass its name (`--model-name NAME`) or set "
            f"{ENV_OVERRIDES['registered_model_name']} / `registered_model_name` in mlflow.yaml. Registered "
            f"models in {self.registry_uri}: {registered or 'none'}"
        )

    def _ensure_registered(self, name: str) -> str:
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently
                self.client.create_registered_model(name)
        return name

    def experiment_url(self) -> str:
        """The experiment's training runs in the MLflow UI (`TrackingSettings.ui_address`).

        MLflow 3.17's UI opens an experiment in the workflow its GenAI / Model training switch last held (GenAI by
        default, whatever the `mlflow.experimentKind` tag says); `workflowType=machine_learning` opens it on
        the training runs."""
        return f"{self.settings.ui_address}/#/experiments/{self.experiment_id()}/runs?{UI_WORKFLOW}"

    def run_url(self, run_id: str) -> str:
        """Where the run shows in the MLflow UI (`TrackingSettings.ui_address`), in the Model training workflow."""
        return f"{self.settings.ui_address}/#/experiments/{self.experiment_id()}/runs/{run_id}?{UI_WORKFLOW}"

    def model_version_url(self, name: str, version: str) -> str:
        """Where a registered model version shows in the MLflow UI."""
        return f"{self.settings.ui_address}/#/models/{name}/versions/{version}"


TEST_PREFIX = "test/"
"""Metrics of the test split (`test/accuracy`...): a model's evaluation, linked to the logged model."""


def logged_model_name(run_name: str | None) -> str:
    """A logged model's name from its run's (`digits 8x[32,32] sgdr-2` -> `digits-8x32-32-sgdr-2`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name or "").strip("-.") or "model"


COMPARED_TAGS = ("task", "input_schema")
"""Version tags that must be equal for a new version to be compared with the champion (`tasks.registry`)."""


def comparison_blocker(
    champion: ModelVersion, identity: Mapping[str, str], metric: str, champion_value: float | None
) -> str | None:
    """Why a new version with `identity` (its `COMPARED_TAGS`) cannot be compared on `test_<metric>` with the
    `champion` version, or None if it can. The reason names what differs and how to proceed."""
    at = f"the champion (version {champion.version} of {champion.name!r})"
    stays = "the champion alias stays where it is"
    for key in COMPARED_TAGS:
        theirs, ours = champion.tags.get(key), identity.get(key)
        if theirs is None or ours is None:
            whose = "this version" if ours is None else at
            return f"{whose} has no {key!r} tag to compare: {stays}; move the alias by hand if it should"
        if theirs != ours:
            what = (
                f"is a {theirs} model, this one a {ours} model"
                if key == "task"
                else schema_difference(theirs, ours)
            )
            return (
                f"{at} {what}: not compared, {stays}. Register models of other data under their own name "
                "(registry.model_name)"
            )
    if champion_value is None:
        return (
            f"{at} has no test_{metric} to compare with: {stays}. Gate on a metric it has (evaluation.metric) "
            "or move the alias by hand"
        )
    return None


def schema_difference(theirs: str, ours: str) -> str:
    """What differs between two `input_schema` tags (JSON lists of `[column, type]`), in words."""
    try:
        old, new = dict(json.loads(theirs)), dict(json.loads(ours))
    except (ValueError, TypeError):
        return "takes another input schema"
    changes = {
        "only this version has": [c for c in new if c not in old],
        "only the champion has": [c for c in old if c not in new],
        "other types": [c for c in new if c in old and old[c] != new[c]],
    }
    described = [
        f"{how} {cols[:5]}{' ...' if len(cols) > 5 else ''}" for how, cols in changes.items() if cols
    ]
    return f"takes other input columns ({'; '.join(described) or 'the same, in another order'})"


def log_learning_rate_plot(
    tracker: Tracker, run_id: str, steps: list[int], lrs: list[float], cycle_ends: list[int], directory: str
) -> None:
    """`directory/learning_rate.png`: the learning rate of every optimiser step, cycle ends marked, and beside it
    the exact per-step curve `learning_rate.parquet` (columns `step`, `lr`: every step, where the `schedule/lr`
    metric holds a bounded sample, `tasks.lr_curve`); both logged to the run's `plots/`."""
    ends = [e for e in cycle_ends if steps and steps[0] <= e <= steps[-1]]
    png = plot_learning_rate(steps, lrs, ends, Path(directory) / "learning_rate.png")
    curve = Path(directory) / "learning_rate.parquet"
    pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "lr": pd.Series(lrs, dtype="float64")}).to_parquet(
        curve, index=False
    )
    tracker.log_artifact(run_id, png, "plots")
    tracker.log_artifact(run_id, curve, "plots")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return text[:MAX_PARAM_LENGTH]


def _finite(value: Any) -> bool:
    try:
        return value is not None and float(value) == float(value) and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False
