"""Crash recovery for the flows: which MLflow parent run a flow writes to, and what happens to runs whose process
died (a `kill -9`, a lost machine) while they were RUNNING.

Every parent run carries the process that owns it (`ensemble.host`, `ensemble.pid`, `ensemble.pid_start`) and a
resume key: a hash of the pipeline config and of the data's content. A flow starting with `resume="auto"` (the
default of `ensemble train`):
- marks FAILED (parent and children) every RUNNING run of the experiment whose owner process is gone, and the
  Prefect flow run it belonged to Crashed; it says so in the log;
- continues, instead of starting anew, the newest such run with its own resume key: the same MLflow parent and member
  runs, the training checkpoint under `output_dir/runs/<run_id>` (`train_task` resumes from it).
`resume="fresh"` never continues one; `resume=<run id>` continues that run (unfinished, its process gone, same key).

A process is known to be gone when it ran on this host and its pid is dead or now belongs to a younger process,
or when Prefect has the flow run it belonged to in a final state. A RUNNING run on another host whose Prefect flow
run is still RUNNING is left alone: nothing proves it dead.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass

import psutil
from mlflow.entities import Run
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from ensemble.data import DataError, file_sha256
from tasks.config import PipelineConfig
from tasks.tracking import Tracker

HOST_TAG, PID_TAG, PID_START_TAG, KEY_TAG = (
    "ensemble.host",
    "ensemble.pid",
    "ensemble.pid_start",
    "ensemble.resume_key",
)
FLOW_RUN_TAG = "prefect.flow_run_id"
RESUME_CHOICES = ("auto", "fresh")


def resume_key(config: PipelineConfig) -> str | None:
    """Hash of the config (run name aside) and of the data's content; None while the data cannot be read (the run
    is then new, and the data step fails it with the clear message)."""
    try:
        content = file_sha256(config.data.source)
    except DataError:
        return None
    material = json.dumps([config.model_dump(exclude={"run_name"}), content], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def owner_tags() -> dict[str, str]:
    """The tags naming this process as the owner of a run."""
    process = psutil.Process()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(process.pid),
        PID_START_TAG: f"{process.create_time():.3f}",
    }


@dataclass(frozen=True)
class Opened:
    """The parent run a flow writes to; `resumed` when it continues a run whose process died."""

    run_id: str
    resumed: bool


def open_parent_run(
    tracker: Tracker,
    run_name: str,
    tags: dict[str, str],
    key: str | None,
    resume: str = "auto",
    log: Callable[[str], None] = print,
) -> Opened:
    """Sweep runs left RUNNING by dead processes, then continue one (see the module doc) or start a new run.

    Raises:
        ValueError: `resume` names a run that cannot be continued (the message says why).
    """
    dead = [run for run in tracker.unfinished_runs() if owner_is_gone(run)]
    chosen: Run | None = None
    if resume not in RESUME_CHOICES:
        chosen = resumable(tracker, resume, key, dead)
    elif resume == "auto" and key is not None:
        chosen = next((run for run in dead if run.data.tags.get(KEY_TAG) == key), None)  # newest first
    for run in dead:
        if chosen is None or run.info.run_id != chosen.info.run_id:
            mark_crashed(tracker, run, log)
    owner = {**tags, **owner_tags(), **({KEY_TAG: key} if key else {})}
    if chosen is None:
        return Opened(tracker.start_run(run_name, tags=owner), resumed=False)
    previous = chosen.data.tags.get(FLOW_RUN_TAG)
    if previous and previous != owner.get(FLOW_RUN_TAG):
        set_prefect_crashed(previous, f"Its process died; resumed by flow run {owner.get(FLOW_RUN_TAG)}.")
    tracker.reopen_run(chosen.info.run_id, owner)
    log(
        f"Resuming MLflow run {chosen.info.run_id} ({chosen.info.run_name}), left unfinished by pid "
        f"{chosen.data.tags.get(PID_TAG)} on {chosen.data.tags.get(HOST_TAG)}; pass --fresh to start anew."
    )
    return Opened(chosen.info.run_id, resumed=True)


def resumable(tracker: Tracker, run_id: str, key: str | None, dead: list[Run]) -> Run:
    """The run `run_id`, if it may be continued by a flow with resume key `key`."""
    try:
        run = tracker.client.get_run(run_id)
    except Exception as error:
        raise ValueError(
            f"--resume {run_id}: no such MLflow run in {tracker.settings.tracking_uri}"
        ) from error
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        raise ValueError(f"--resume {run_id}: the run is FINISHED; there is nothing to resume")
    if status == "RUNNING" and run_id not in {r.info.run_id for r in dead}:
        raise ValueError(
            f"--resume {run_id}: the run is still RUNNING in pid {tags.get(PID_TAG)} on {tags.get(HOST_TAG)}"
        )
    if tags.get(KEY_TAG) != key:
        raise ValueError(
            f"--resume {run_id}: the run was started with another config or data content (resume key "
            f"{tags.get(KEY_TAG)}, this command's {key}); run the command that started it"
        )
    return run


def owner_is_gone(run: Run) -> bool:
    tags = run.data.tags
    if tags.get(HOST_TAG) == socket.gethostname() and PID_TAG in tags:
        try:
            process = psutil.Process(int(tags[PID_TAG]))
            return f"{process.create_time():.3f}" != tags.get(PID_START_TAG)  # the pid was reused
        except psutil.NoSuchProcess:
            return True
    flow_run_id = tags.get(FLOW_RUN_TAG)
    if not flow_run_id or flow_run_id == "None":
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # another Prefect API (or none) knows the flow run: nothing proves the owner dead
        return False
    return state is not None and state.is_final()


def mark_crashed(tracker: Tracker, run: Run, log: Callable[[str], None]) -> None:
    """FAILED in MLflow (the run and its children), Crashed in Prefect; said in the log."""
    run_id, tags = run.info.run_id, run.data.tags
    for child in tracker.unfinished_children(run_id):
        tracker.finish_run(child, "FAILED")
    tracker.set_tags(run_id, {"ensemble.failure": "its process died while the run was RUNNING"})
    tracker.finish_run(run_id, "FAILED")
    flow_run_id = tags.get(FLOW_RUN_TAG)
    prefect = "no Prefect flow run recorded"
    if flow_run_id and flow_run_id != "None":
        prefect = set_prefect_crashed(flow_run_id, "Its process died; found by a later flow run.")
    log(
        f"MLflow run {run_id} ({run.info.run_name}) was left RUNNING by pid {tags.get(PID_TAG)} on "
        f"{tags.get(HOST_TAG)}, which is gone: marked FAILED ({prefect})."
    )


def set_prefect_crashed(flow_run_id: str, message: str) -> str:
    """Force the flow run into Crashed unless it already ended; returns what became of it, in words (a flow run of
    another Prefect API than this process's is left as it is, and the words say so)."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return f"flow run {flow_run_id} had already ended {state.type.value}"
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            return f"flow run {flow_run_id} marked Crashed"
    except Exception:  # the flow run lives on another Prefect API (or none answers): MLflow still says FAILED
        return f"flow run {flow_run_id} is unknown to this Prefect API and left as it is there"
