"""The `train` flow: data prep -> fused training -> snapshots -> growth rounds -> evaluation -> registration.

One MLflow parent run per flow run; the flow opens it, passes its id to every task and closes it FINISHED, or
FAILED if any step raised (a failed run never registers a model).

With `train.members_per_shard` set, the members are trained as shards, one `train-fused` task each, submitted to
the task runner of `config.runner` (thread pool, Dask or Ray), then merged into one ensemble; whichever way the
flow is started (CLI, deployment, Python), the config decides where shards run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

import ensemble.tensorflow_quietly  # noqa: F401  (first: a worker's flow run prints none of TF's native notes)
from ensemble.selection import check_metric
from ensemble.shards import shard_ranges
from tasks.config import PipelineConfig, RunnerSection
from tasks.data import log_data_task, prepare_data_task
from tasks.describe import parent_description, run_title
from tasks.evaluate import evaluate_task
from tasks.growth import growth_task
from tasks.lr_curve import growth_epochs
from tasks.recovery import open_parent_run, resume_key
from tasks.registry import register_task, registered_model_name
from tasks.selection import SELECTED_TEST_PREFIX, select_ensemble_task
from tasks.snapshots import collect_snapshots_task
from tasks.tracking import Tracker, TrackingSettings
from tasks.train import log_training_task, merge_shards_task, train_task


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
    """The Prefect flow run this MLflow run belongs to: id, name and (with a Prefect UI) address."""
    tags = {"prefect.flow_run_id": str(flow_run.get_id()), "prefect.flow_run_name": str(flow_run.get_name())}
    url = flow_run.get_flow_run_ui_url()
    return {**tags, "prefect.flow_run_url": url} if url else tags


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
    opened = open_parent_run(
        tracker,
        title,
        {"kind": "ensemble", "pipeline": "train", **prefect_tags()},
        resume_key(config),
        resume,
        log=logger.warning,
    )
    run_id = opened.run_id
    try:
        tracker.log_params(run_id, config.model_dump(exclude={"run_name"}))
        data_dir = prepare_data_task(config.data, config.output_dir)
        summary = log_data_task(settings, run_id, data_dir, config.data.source)
        # An inferred task is known only now: fail before training (evaluate_task resolves the default metric).
        config.evaluation.check_task(summary["task"])
        if config.sweep is not None:  # `selection_metric: rmse` on classes, before training, not after it
            check_metric(config.sweep.selection_metric, summary["task"])
        run_dir = str(Path(config.output_dir).resolve() / "runs" / run_id)
        trained = train_members(config, data_dir, run_dir, settings, run_id)  # logged live while it trains
        member_run_ids = trained["member_run_ids"]
        snapshot_group = None
        if config.snapshots.enabled:
            combiner = config.evaluation.combiner  # the snapshot curve combines as the test scores do
            snapshot_group = collect_snapshots_task(
                settings, run_id, data_dir, trained, config.snapshots, run_dir, combiner=combiner
            )
        if config.growth.enabled:
            trained = growth_task(
                settings, run_id, member_run_ids, data_dir, trained, config.growth, config.train, run_dir
            )
        # The last cycle's snapshot IS the trained model: count it once, unless growth changed the model since
        # (growth_task passes the grown model on only when it is not worse on validation).
        grown = trained.get("growth_outcome") == "grown"
        groups = [trained["model_path"]] if grown or snapshot_group is None else []
        groups += [snapshot_group] if snapshot_group else []
        evaluation = evaluate_task(
            settings,
            run_id,
            member_run_ids,
            data_dir,
            groups,
            config.evaluation,
            run_dir,
            model_path=trained["model_path"],  # member runs' test/* come from each member's final weights
            snapshot_dir=trained["snapshot_dir"],
        )
        if config.sweep is not None:  # a sweep registers its greedy ensemble selection (tasks.selection)
            selection = select_ensemble_task(
                settings, run_id, member_run_ids, data_dir, evaluation, trained, config, run_dir
            )
            evaluation = {**evaluation, **selection}
        registration = None
        if config.registry.enabled:
            registration = register_task(
                settings,
                run_id,
                data_dir,
                evaluation["predictor_dir"],
                evaluation["metric"],
                evaluation["value"],
                evaluation["higher_is_better"],
                registered_model_name(config.registry, settings, config.data.source),
                evaluation_prefix=SELECTED_TEST_PREFIX if config.sweep is not None else None,
            )
            if registration["reason"]:
                logger.warning(f"Registered without an alias: {registration['reason']}")
        describe_run(tracker, run_id, title, evaluation, registration, trained)
    except BaseException:
        for member_run in tracker.child_runs(run_id, "member").values():  # those opened before the failure
            tracker.finish_run(member_run, "FAILED")
        tracker.finish_run(run_id, "FAILED")
        raise
    for member_run in member_run_ids:
        tracker.finish_run(member_run)
    tracker.finish_run(run_id)
    logger.info(f"MLflow run {run_id}: {tracker.run_url(run_id)}")
    return {
        "run_id": run_id,
        "metrics": evaluation["metrics"],
        "registration": registration,
        "predictor_dir": evaluation["predictor_dir"],
        "member_run_ids": member_run_ids,
        # For `ensemble train`'s closing summary: the ensemble against its best member, where to look.
        "metric": evaluation["metric"],
        "best_member": evaluation.get("best_member"),
        "selection": evaluation.get("selection"),  # a sweep's registered selection (`metrics`: uniform)
        "run_url": tracker.run_url(run_id),
    }


def train_members(
    config: PipelineConfig, data_dir: str, run_dir: str, settings: TrackingSettings, run_id: str
) -> dict:
    """One `train_task` for all members, or one per shard on `config.runner` followed by `merge_shards_task`.

    Each task logs its members live; the parent run's mean curves and learning rate come from the one task, or,
    for shards, from `log_training_task` after the merge.
    """
    shards = shard_ranges(config.model.members, config.train.members_per_shard)
    later_epochs = growth_epochs(config.growth)  # the `schedule/lr` metric's stride counts them
    if len(shards) == 1:
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
        )
    with build_task_runner(config.runner) as runner:
        futures = [
            runner.submit(
                train_task.with_options(task_run_name=f"train-shard-{i}"),
                {
                    "data_dir": data_dir,
                    "model": config.model.model_copy(update={"members": count}),
                    "optimizer": config.optimizer,
                    "train": config.train,
                    "snapshots": config.snapshots,
                    "run_dir": str(Path(run_dir) / f"shard-{i}"),
                    "member_offset": offset,
                    "settings": settings,
                    "run_id": run_id,
                    "parent_curves": False,
                    "sweep": config.sweep,
                },
            )
            for i, (offset, count) in enumerate(shards)
        ]
        results = [future.result() for future in futures]
    merged = merge_shards_task(results, config.train, run_dir)
    log_training_task(settings, run_id, merged, later_epochs)
    return merged


def describe_run(
    tracker: Tracker, run_id: str, title: str, evaluation: dict, registration: dict | None, trained: dict
) -> None:
    """The parent run's Markdown description (key test metrics, the ensemble against its best member, the registry
    decision) and the same, with links, as the flow run's `run-summary` artifact in Prefect."""
    registry = (registration or {}).get("decision") or "Not registered (`registry.enabled` is false)."
    growth = [f"Growth: {trained['growth_reason']}."] if trained.get("growth_reason") else []
    text = parent_description(
        title,
        evaluation["metrics"],
        evaluation["metric"],
        evaluation.get("best_member"),
        registry,
        growth + selection_lines(evaluation.get("selection"), evaluation["metric"]),
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
