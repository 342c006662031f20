"""Snapshots in a checkpoint, one file per cycle, each written once.

`snapshots/model.json` holds the model class and config; `snapshots/cycle-0003.npz` one cycle's snapshots: arrays
`members (K,)`, `w0 .. w{J-1}` `(K, ...)` (each member's weights in `Snapshots.weights` order, stacked) and
`score_<name> (K,)`. Which snapshots a checkpoint keeps is told by its run record's events (`keep_best` drops
snapshots after their file is written): `{"snapshots": {"added": [[m, c], ...], "dropped": [...], "steps":
[[c, step], ...]}}` in the row of the epoch where they changed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from ensemble.model.member_model import find_model_class, model_class_name
from ensemble.snapshots.collector import Snapshots
from ensemble.training.record import RunRecord

SNAPSHOT_DIR = "snapshots"
SNAPSHOT_CONFIG = "model.json"  # in SNAPSHOT_DIR: the snapshots' `model_class` and `model_config`
Key = tuple[int, int]  # (member, cycle)


def carry(source: Path, target: Path) -> None:
    """`target` becomes a hard link of `source` (no bytes written), or a copy where links are not supported."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def cycle_file(cycle: int) -> str:
    return f"cycle-{int(cycle):04d}.npz"


def write_snapshots(
    directory: Path,
    snapshots: Snapshots,
    previous: Path | None = None,
    on_disk: dict[int, set[int]] | None = None,
) -> dict[int, set[int]]:
    """`directory/snapshots/`: `model.json` and a cycle file per cycle with kept snapshots (see the module
    docstring). A file of `previous/snapshots/` that holds every kept member of its cycle (`on_disk`) is taken
    over by hard link, not written again.

    Returns `{cycle: members}` of the cycle files written or taken over.
    """
    folder, before, on_disk = directory / SNAPSHOT_DIR, None, on_disk or {}
    folder.mkdir(parents=True, exist_ok=True)
    if previous is not None and (previous / SNAPSHOT_DIR / SNAPSHOT_CONFIG).is_file():
        before = previous / SNAPSHOT_DIR
        carry(before / SNAPSHOT_CONFIG, folder / SNAPSHOT_CONFIG)
    else:
        model = {
            "model_class": model_class_name(snapshots.model_class),
            "model_config": snapshots.model_config,
        }
        (folder / SNAPSHOT_CONFIG).write_text(json.dumps(model))
    kept: dict[int, set[int]] = defaultdict(set)
    for member, cycle in snapshots.weights:
        kept[cycle].add(member)
    files = {}
    for cycle, members in sorted(kept.items()):
        name = cycle_file(cycle)
        if before is not None and members <= on_disk.get(cycle, set()) and (before / name).is_file():
            carry(before / name, folder / name)
            files[cycle] = on_disk[cycle]
            continue
        ordered = sorted(members)
        weights = [snapshots.weights[(m, cycle)] for m in ordered]
        arrays = {"members": np.asarray(ordered, "int64")}
        arrays |= {f"w{j}": np.stack([w[j] for w in weights]) for j in range(len(weights[0]))}  # (K, ...)
        for score in sorted({s for m in ordered for s in snapshots.scores.get((m, cycle), {})}):
            arrays[f"score_{score}"] = np.asarray([snapshots.scores[(m, cycle)][score] for m in ordered])
        np.savez(folder / name, **arrays)
        files[cycle] = set(ordered)
    return files


def read_snapshots(folder: Path, record: RunRecord) -> tuple[Snapshots | None, dict[int, set[int]]]:
    """The snapshots the record's events keep (`EpochCheckpoint.snapshot_events`), from `write_snapshots`' files;
    None when the checkpoint has none. Also `{cycle: members}` of the cycle files."""
    if not (folder / SNAPSHOT_CONFIG).is_file():
        return None, {}
    keys: set[Key] = set()
    steps: dict[int, int] = {}
    for note in record.notes:
        events = note.get("snapshots", {})
        keys |= {(int(m), int(c)) for m, c in events.get("added", [])}
        keys -= {(int(m), int(c)) for m, c in events.get("dropped", [])}
        steps |= {int(c): int(s) for c, s in events.get("steps", [])}
    weights, scores, files = {}, {}, {}
    for cycle in sorted({c for _, c in keys}):
        path = folder / cycle_file(cycle)
        if not path.is_file():
            raise FileNotFoundError(
                f"The record of {folder.parent} keeps snapshots of cycle {cycle}; {path} is missing."
            )
        with np.load(path, allow_pickle=False) as arrays:
            members = arrays["members"].tolist()
            stacked = [
                arrays[f"w{j}"]
                for j in range(sum(name[:1] == "w" and name[1:].isdigit() for name in arrays.files))
            ]
            named = {
                name[len("score_") :]: arrays[name] for name in arrays.files if name.startswith("score_")
            }
        files[cycle] = set(members)
        for i, member in enumerate(members):
            if (member, cycle) in keys:
                weights[(member, cycle)] = [w[i] for w in stacked]
                if named:
                    scores[(member, cycle)] = {name: float(values[i]) for name, values in named.items()}
    model = json.loads((folder / SNAPSHOT_CONFIG).read_text())
    model_class = find_model_class(model["model_class"])
    return Snapshots(model["model_config"], weights, steps, scores, model_class), files


def note_all_snapshots(record: RunRecord, snapshots: Snapshots) -> None:
    """Note every snapshot as taken in the record's last row (a record written at once, without its events)."""
    if not record.notes:
        raise ValueError("A record needs at least one epoch to note snapshots in; received a record without.")
    record.notes[-1] = {
        "snapshots": {
            "added": [list(key) for key in sorted(snapshots.weights)],
            "steps": [[c, s] for c, s in sorted(snapshots.steps.items())],
        }
    }
