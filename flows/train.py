"""The `train` flow: data prep -> fused training -> snapshots -> growth rounds -> evaluation -> registration.

One MLflow parent run per flow run; the flow opens it, passes its id to every task and closes it FINISHED, or
FAILED if any step raised (a failed run never registers a model).

With `train.members_per_shard` set, the members are trained as shards by the `train-shards` subflow: one
`train-fused` task per shard, mapped onto the subflow's task runner, that of `config.runner` (thread pool, Dask or
Ray), then merged into one ensemble; whichever way the flow is started (CLI, deployment, Python), the config
decides where shards run.

Tasks hand each other small typed values (`tasks.trained.Trained`, `tasks.growth.Grown`,
`tasks.evaluate.Evaluation`: paths, counts, scores), never models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run, task_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

import ensemble.tensorflow_quietly  # noqa: F401  (first: a worker's flow run prints none of TF's native notes)
from ensemble.evaluation.selection import check_metric
from ensemble.training.shards import shard_ranges
from tasks.config import PipelineConfig, RunnerSection
from tasks.data import log_data_task, prepare_data_task
from tasks.describe import parent_description, run_title
from tasks.evaluate import Evaluation, evaluate_task
from tasks.growth import Grown, growth_task
from tasks.lr_curve import growth_epochs
from tasks.recovery import open_parent_run, resume_key
from tasks.registry import register_task, registered_model_name
from tasks.selection import SELECTED_TEST_PREFIX, select_ensemble_task
from tasks.snapshots import collect_snapshots_task
from tasks.tracking import Tracker, TrackingSettings
from tasks.train import log_training_task, merge_shards_task, train_task
from tasks.trained import Trained


def running_flow_config() -> PipelineConfig:
    """The `config` parameter of the flow run being named (the default config when it has none)."""
    context = FlowRunContext.get()
    config = (context.parameters if context else {}).get("config") or PipelineConfig()
    if isinstance(config, dict):  # a deployment's parameters arrive as JSON
        config = PipelineConfig.model_validate(config)
    return config


def flow_run_title() -> str:
    """The flow run's name: the config's `run_name`, else what the run is (`tasks.describe.run_title`)."""
    config = running_flow_config()
    return config.run_name or run_title(config)


def prefect_tags() -> dict[str, str]:
    """The Prefect flow run this MLflow run belongs to: id, name and (with a Prefect UI) address.

    Without a UI address Prefect still returns the flow run's path (`/flow-runs/flow-run/<id>`), a link to
    nowhere: only an absolute address is kept."""
    tags = {"prefect.flow_run_id": str(flow_run.get_id()), "prefect.flow_run_name": str(flow_run.get_name())}
    url = flow_run.get_flow_run_ui_url() or ""
    return {**tags, "prefect.flow_run_url": url} if url.startswith(("http://", "https://")) else tags


@flow(name="train-ensemble", flow_run_name=flow_run_title, log_prints=True)
def train_flow(
    config: PipelineConfig = PipelineConfig(), tracking: TrackingSettings | None = None, resume: str = "auto"
) -> dict:
    """Train, evaluate and register one ensemble. Returns run id, metrics and the registered version.

    `resume`: "auto" continues the unfinished run of this config and data whose process died (`tasks.recovery`),
    "fresh" starts a new run whatever is left, a run id continues that run.
    """
    logger = get_run_logger()
    settings = tracking or TrackingSettings.load()
    tracker = Tracker(settings)
    title = config.run_name or run_title(config)
    tags = {"kind": "ensemble", "pipeline": "train", **prefect_tags()}
    opened = open_parent_run(tracker, title, tags, resume_key(config), resume, log=logger.warning)
    with tracker.run(opened.run_id, nested="member") as run_id:  # FAILED (members too) if a step raises
        tracker.log_params(run_id, config.model_dump(exclude={"run_name"}))
        data_dir = prepare_data(config, settings, run_id)
        run_dir = str(Path(config.output_dir).resolve() / "runs" / run_id)
        trained = train_members(config, data_dir, run_dir, settings, run_id)  # logged live while it trains
        trained, growth, groups = snapshots_and_growth(config, settings, run_id, data_dir, trained, run_dir)
        evaluation = evaluate(config, settings, run_id, data_dir, groups, trained, run_dir)
        registration = register(config, settings, run_id, data_dir, evaluation, logger.warning)
        describe_run(tracker, run_id, title, evaluation, registration, growth)
    logger.info(f"MLflow run {run_id}: {tracker.run_url(run_id)}")
    return {
        "run_id": run_id,
        "metrics": evaluation.metrics,
        "registration": registration,
        "predictor_dir": evaluation.predictor_dir,
        "member_run_ids": list(trained.member_run_ids),
        # For `ensemble train`'s closing summary: the ensemble against its best member, where to look.
        "metric": evaluation.metric,
        "best_member": evaluation.best_member,
        "selection": evaluation.selection,  # a sweep's registered selection (`metrics`: uniform)
        "run_url": tracker.run_url(run_id),
    }


def snapshots_and_growth(
    config: PipelineConfig,
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    trained: Trained,
    run_dir: str,
) -> tuple[Trained, Grown | None, list[str]]:
    """The snapshot group (`collect_snapshots_task`) and the growth rounds (`growth_task`), each when switched
    on. Returns the model passed on, growth's result (None without growth) and the model files evaluation scores
    as one ensemble."""
    snapshot_group = None
    if config.snapshots.enabled:  # the snapshot curve combines as the test scores do
        snapshot_group = collect_snapshots_task(
            settings,
            run_id,
            data_dir,
            trained,
            config.snapshots,
            run_dir,
            combiner=config.evaluation.combiner,
        )
    growth = None
    if config.growth.enabled:
        growth = growth_task(
            settings,
            run_id,
            trained.member_run_ids,
            data_dir,
            trained,
            config.growth,
            config.train,
            run_dir,
            combiner=config.evaluation.combiner,
        )
        trained = growth.trained  # the grown model only when it is not worse on validation
    # The last cycle's snapshot IS the trained model: count it once, unless growth changed the model since.
    grown = growth is not None and growth.outcome == "grown"
    groups = [trained.model_path] if grown or snapshot_group is None else []
    groups += [snapshot_group] if snapshot_group else []
    return trained, growth, groups


def prepare_data(config: PipelineConfig, settings: TrackingSettings, run_id: str) -> str:
    """Prepare and log the data; returns its directory. Fails before training when the data's task (known only
    now, when inferred) does not fit `evaluation` or the sweep's `selection_metric` (`rmse` on classes...)."""
    data_dir = prepare_data_task(config.data, config.output_dir)
    summary = log_data_task(settings, run_id, data_dir, config.data.source)
    config.evaluation.check_task(summary["task"])  # evaluate_task resolves the default metric
    if config.sweep is not None:
        check_metric(config.sweep.selection_metric, summary["task"])
    return data_dir


def train_members(
    config: PipelineConfig, data_dir: str, run_dir: str, settings: TrackingSettings, run_id: str
) -> Trained:
    """One `train_task` for all members, or with `train.members_per_shard`, the `train-shards` subflow on the task
    runner of `config.runner` (`build_task_runner`).

    Each task logs its members live; the parent run's mean curves and learning rate come from the one task, or,
    for shards, from the subflow's `log_training_task` after the merge.
    """
    later_epochs = growth_epochs(config.growth)  # the `schedule/lr` metric's stride counts them
    if len(shard_ranges(config.model.members, config.train.members_per_shard)) > 1:
        shards_flow = train_shards_flow.with_options(task_runner=build_task_runner(config.runner))
        return shards_flow(config, data_dir, run_dir, settings, run_id, later_epochs)
    return train_task(
        data_dir,
        config.model,
        config.optimizer,
        config.train,
        config.snapshots,
        run_dir,
        settings=settings,
        run_id=run_id,
        sweep=config.sweep,
        later_epochs=later_epochs,
        combiner=config.evaluation.combiner,
    )


def shard_run_name() -> str:
    """A shard's task run is named after its directory: `train-shard-<i>`."""
    return f"train-{Path(task_run.parameters['run_dir']).name}"


@flow(name="train-shards")
def train_shards_flow(
    config: PipelineConfig,
    data_dir: str,
    run_dir: str,
    settings: TrackingSettings,
    run_id: str,
    later_epochs: int = 0,
) -> Trained:
    """Members in shards of `train.members_per_shard`: one `train-fused` task per shard, mapped onto this flow's
    task runner (`config.runner`, set by `train_members`), trained in `run_dir/shard-<i>`, each logging its members
    live; then merged into one ensemble in `run_dir` (`merge_shards_task`) and the parent run's curves logged
    (`log_training_task`). Members are seeded and ordered as one task would (`member_offset`)."""
    shards = shard_ranges(config.model.members, config.train.members_per_shard)
    futures = train_task.with_options(task_run_name=shard_run_name).map(
        data_dir=unmapped(data_dir),
        model=[config.model.model_copy(update={"members": count}) for _, count in shards],
        optimizer=unmapped(config.optimizer),
        train=unmapped(config.train),
        snapshots=unmapped(config.snapshots),
        run_dir=[str(Path(run_dir) / f"shard-{i}") for i in range(len(shards))],
        member_offset=[offset for offset, _ in shards],
        settings=unmapped(settings),
        run_id=unmapped(run_id),
        parent_curves=unmapped(False),
        sweep=unmapped(config.sweep),
        combiner=unmapped(config.evaluation.combiner),
    )
    merged = merge_shards_task(futures.result(), config.train, run_dir)
    log_training_task(settings, run_id, merged, later_epochs)
    return merged


def evaluate(
    config: PipelineConfig,
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    groups: list[str],
    trained: Trained,
    run_dir: str,
) -> Evaluation:
    """Score the ensemble of `groups` (`evaluate_task`); a sweep's registered predictor is then its greedy
    ensemble selection (`select_ensemble_task`)."""
    member_run_ids = list(trained.member_run_ids)
    evaluation = evaluate_task(
        settings,
        run_id,
        member_run_ids,
        data_dir,
        groups,
        config.evaluation,
        run_dir,
        model_path=trained.model_path,  # member runs' test/* come from each member's final weights
        snapshot_dir=trained.snapshot_dir,
        close_members=config.sweep is None,  # a sweep's selection logs to the member runs after it
    )
    if config.sweep is None:
        return evaluation
    selection = select_ensemble_task(
        settings, run_id, member_run_ids, data_dir, evaluation, trained, config, run_dir
    )
    return replace(evaluation, **asdict(selection))


def register(
    config: PipelineConfig,
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    evaluation: Evaluation,
    warn: Callable[[str], None],
) -> dict | None:
    """Register the evaluated predictor (`register_task`; None with `registry.enabled` false); a registration
    without an alias is said through `warn`."""
    if not config.registry.enabled:
        return None
    registration = register_task(
        settings,
        run_id,
        data_dir,
        evaluation.predictor_dir,
        evaluation.metric,
        evaluation.value,
        evaluation.higher_is_better,
        registered_model_name(config.registry, settings, config.data.source),
        evaluation_prefix=SELECTED_TEST_PREFIX if config.sweep is not None else None,
    )
    if registration["reason"]:
        warn(f"Registered without an alias: {registration['reason']}")
    return registration


def describe_run(
    tracker: Tracker,
    run_id: str,
    title: str,
    evaluation: Evaluation,
    registration: dict | None,
    growth: Grown | None,
) -> None:
    """The parent run's Markdown description (key test metrics, the ensemble against its best member, the registry
    decision) and the same, with links, as the flow run's `run-summary` artifact in Prefect."""
    registry = (registration or {}).get("decision") or "Not registered (`registry.enabled` is false)."
    growth_lines = [f"Growth: {growth.reason}."] if growth is not None else []
    text = parent_description(
        title,
        evaluation.metrics,
        evaluation.metric,
        evaluation.best_member,
        registry,
        growth_lines + selection_lines(evaluation.selection, evaluation.metric),
    )
    tracker.describe_run(run_id, text)
    links = [f"MLflow run: [{title}]({tracker.run_url(run_id)})"]
    if registration is not None:
        url = tracker.model_version_url(registration["name"], registration["version"])
        links.append(f"Model version: [{registration['name']} v{registration['version']}]({url})")
    create_markdown_artifact(
        markdown="\n\n".join([text, *links]),
        key="run-summary",
        description="What this flow run trained, how it scored and what the registry did with it",
    )


def selection_lines(selection: dict | None, metric: str) -> list[str]:
    """A sweep's three ensembles on the gating metric: the `ensemble` column above is the uniform one, while the
    registered model is the selection (`tasks.selection`)."""
    values = {
        name: (selection or {}).get(name, {}).get(metric)
        for name in ("selected", "uniform", "best_configuration")
    }
    if values["selected"] is None:
        return []
    others = "; ".join(
        f"{name.replace('_', ' ')} {value:.4f}"
        for name, value in values.items()
        if name != "selected" and value is not None
    )
    beside = f" ({others})" if others else ""
    return [
        "",
        f"Sweep: the registered model is the selected ensemble, test {metric} {values['selected']:.4f}{beside}.",
    ]


def build_task_runner(runner: RunnerSection) -> TaskRunner:
    """The Prefect task runner of `runner`: a thread pool, a `DaskTaskRunner` or a `RayTaskRunner`.

    Raises:
        ImportError: `kind` is dask or ray and its Prefect integration is not installed (the message says how).
    """
    if runner.kind == "thread":
        return ThreadPoolTaskRunner(max_workers=runner.workers)
    if runner.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as error:
            raise ImportError(
                "runner.kind='dask' needs prefect-dask: pip install 'fused-ensembles[dask]'"
            ) from error
        if runner.address:
            return DaskTaskRunner(address=runner.address)
        # A local cluster logs its start/stop at INFO (and a harmless CommClosedError traceback on shutdown).
        logging.getLogger("distributed").setLevel(logging.WARNING)
        cluster = {"processes": runner.processes, "threads_per_worker": 1, "dashboard_address": ":0"}
        if runner.workers:
            cluster["n_workers"] = runner.workers
        return DaskTaskRunner(cluster_kwargs=cluster)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as error:
        raise ImportError(
            "runner.kind='ray' needs prefect-ray: pip install 'fused-ensembles[ray]' (or use kind 'thread' or "
            "'dask')"
        ) from error
    init = {"num_cpus": runner.workers} if runner.workers and not runner.address else None
    return RayTaskRunner(address=runner.address, init_kwargs=init)
