"""Prefect tasks of the data step: prepare (validated, split, standardised; cached on content + config) and log it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from ensemble.data import DataConfig, DataError, PreparedData, file_sha256, prepare_data
from tasks.config import DataSection
from tasks.tracking import Tracker, TrackingSettings


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: retry I/O hiccups, not bad input (a `DataError` fails the same way every time)."""
    return not isinstance(state.data, DataError)


def data_cache_key(context: TaskRunContext, parameters: dict) -> str | None:
    """Content hash of the data source + the data config + the output location.

    None (no cache lookup: the task runs) while the prepared files are not on disk: a cached result would point at
    nothing. A key that only marked them missing would itself be cached and point at nothing the next time they
    are deleted.
    """
    section: DataSection = parameters["data"]
    try:
        content = file_sha256(section.source)
    except DataError:  # a missing file: no cache lookup; the task itself then fails with the clear message
        return None
    target = prepared_dir(parameters["output_dir"], section, content)
    if not (target / "metadata.json").is_file():
        return None
    return hashlib.sha256(json.dumps([content, str(target)]).encode()).hexdigest()


def prepared_dir(output_dir: str, section: DataSection, content: str) -> Path:
    """The folder of the data prepared from source content `content` (its `file_sha256`) with `section`.

    Named after both, like the cache key: content A, then B, then A again finds A's folder still holding A's
    splits (a folder named after the config alone would hold B's by then).
    """
    material = json.dumps([content, section.model_dump()], sort_keys=True)
    return Path(output_dir).resolve() / "data" / hashlib.sha256(material.encode()).hexdigest()[:16]


@task(
    name="prepare-data",
    cache_key_fn=data_cache_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
)
def prepare_data_task(data: DataSection, output_dir: str) -> str:
    """Load, validate, split and standardise; write the splits as Parquet. Returns the prepared directory."""
    content = file_sha256(data.source)
    prepared = prepare_data(DataConfig(**data.model_dump()))
    if file_sha256(data.source) != content:  # retried: the next attempt reads the file as it is then
        raise RuntimeError(f"{data.source} changed while it was being read; preparing it again.")
    target = prepared_dir(output_dir, data, content)
    prepared.save(target)
    return str(target)


@task(name="log-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_data_task(settings: TrackingSettings, run_id: str, data_dir: str, source: str) -> dict:
    """Record the splits as MLflow dataset inputs and the data's shape as params of the run; warn (in the log and
    as the run's tag `data_warnings`, one message a line) about features that look like row IDs."""
    tracker = Tracker(settings)
    prepared = PreparedData.load(data_dir)
    if prepared.warnings:
        for message in prepared.warnings:
            get_run_logger().warning(message)
        tracker.set_tags(run_id, {"data_warnings": "\n".join(prepared.warnings)})
    tracker.log_datasets(
        run_id, prepared.raw, name=Path(source).stem, source=source, target=prepared.preprocessor.target
    )
    summary = {
        "task": prepared.task,
        "features": prepared.num_features,
        "classes": prepared.num_classes,
        "rows_train": len(prepared.y_train),
        "rows_val": len(prepared.y_val),
        "rows_test": len(prepared.y_test),
    }
    tracker.log_params(run_id, {"data_summary": summary})
    return summary
