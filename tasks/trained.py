"""What a training task leaves behind and hands on: the files of a trained ensemble in its run directory (model,
snapshots, history) and `Trained`, the typed result that names them for the next tasks.

`Trained` is a frozen dataclass of paths and counts (small, picklable: a Dask or Ray worker sends it back as is);
the models themselves stay on disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ensemble.model.fused import FusedMLP
from ensemble.snapshots.collector import Snapshots
from ensemble.training.record import RunRecord


@dataclass(frozen=True)
class Trained:
    """A trained ensemble (members `member_offset .. member_offset + members - 1`), by where it is.

    Attributes:
        model_path: the `.keras` model of the members' final weights.
        checkpoint: the checkpoint directory (weights, optimiser state, record) that growth or a resume continues.
        history_path: `history.json` (`save_history`): per-epoch logs, the per-step learning rate, cycle ends.
        snapshot_dir: the saved `Snapshots`, or None with snapshots off.
        epochs: epochs trained (resumed ones included).
        steps: the last global optimiser step.
        member_offset: the first member's index in the whole ensemble.
        members: how many members.
        member_run_ids: the members' nested MLflow runs in member order (empty when not tracked).
    """

    model_path: str
    checkpoint: str
    history_path: str
    snapshot_dir: str | None
    epochs: int
    steps: int
    member_offset: int
    members: int
    member_run_ids: tuple[str, ...] = ()


def save_results(
    run_dir: Path,
    fused: FusedMLP,
    snapshots: Snapshots | None,
    record: RunRecord,
    member_offset: int,
    member_run_ids: Sequence[str] = (),
) -> Trained:
    """The trained model, its snapshots and the whole run's history (`record`, resumed epochs included) in
    `run_dir`; the checkpoint is expected at `run_dir/checkpoint`."""
    fused.save(run_dir / "model.keras")
    snapshot_dir = str(snapshots.save(run_dir / "snapshots")) if snapshots is not None else None
    history_path = save_history(record, run_dir / "history.json")
    return Trained(
        model_path=str(run_dir / "model.keras"),
        checkpoint=str(run_dir / "checkpoint"),
        history_path=str(history_path),
        snapshot_dir=snapshot_dir,
        epochs=len(record.epochs),
        steps=record.steps[-1] if record.steps else 0,
        member_offset=member_offset,
        members=fused.members,
        member_run_ids=tuple(member_run_ids),
    )


def save_history(record: RunRecord, path: Path) -> Path:
    """The run record as `history.json` (`RunRecord.history`): per-epoch logs (arrays as lists), the per-step
    learning rate and the cycle ends."""
    path.write_text(json.dumps(record.history()))
    return path


def read_history(trained: Trained) -> dict:
    """The `history.json` of `trained` (`save_history`'s keys: `epochs`, `lr`, `steps`, `cycle_ends`)."""
    return json.loads(Path(trained.history_path).read_text())
