"""The per-epoch checkpoint: what an epoch writes and how long it takes, early and late in a long run.

The checkpoint alone (no training): a fused model of seed 000's size (`--members` members, 30 -> 32 -> 32 -> 1),
an Adam optimiser, `--steps` optimiser steps an epoch (digits at batch size 1: 1,257) and a snapshot of every
member at the end of every `--cycle` epochs. Each epoch: `EpochCheckpoint.on_epoch_end` with one epoch's steps,
per-member logs and, at a cycle end, a new snapshot. Baseline, in the same run: the same checkpoint rewriting the
whole record and every snapshot each epoch (what it did before the record was appended to). Printed: bytes written
and seconds per epoch over the first and the last `--window` epochs, and late / early for each.

    .venv/bin/python benchmarks/bench_checkpoint.py               # ~1 min on 2 busy cores
    .venv/bin/python benchmarks/bench_checkpoint.py --epochs 200 --members 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ensemble.model.fused import FusedMLP  # noqa: E402
from ensemble.snapshots.collector import SnapshotCollector  # noqa: E402
from ensemble.training.checkpoint import EpochCheckpoint, OnDisk  # noqa: E402


class Rewriting(EpochCheckpoint):
    """The baseline: every epoch writes the whole record and every snapshot anew."""

    def write_record(self, directory):
        self._on_disk = OnDisk()
        return super().write_record(directory)


def written_bytes(directory: Path, before: dict) -> tuple[int, dict]:
    """Bytes the last save put on disk: new or changed files whole, appended bytes of a file kept by inode."""
    now = {p: (p.stat().st_ino, p.stat().st_size) for p in directory.rglob("*") if p.is_file()}
    total = 0
    for path, (inode, size) in now.items():
        old = before.get(path.relative_to(directory))
        total += size - old[1] if old and old[0] == inode else size
    return total, {p.relative_to(directory): v for p, v in now.items()}


def run(saver_class, args, root: Path) -> tuple[list[int], list[float]]:
    model = FusedMLP(args.members, 30, (32, 32), task="regression", seed=0)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    collector = SnapshotCollector()
    collector.set_model(model)
    collector.on_train_begin()
    directory = root / saver_class.__name__
    saver = saver_class(directory, optimizer, collector)
    saver.set_model(model)
    rng = np.random.default_rng(0)
    sizes, seconds, files = [], [], {}
    for epoch in range(args.epochs):
        first = epoch * args.steps + 1
        saver.on_steps_end(
            {
                "steps": list(range(first, first + args.steps)),
                "learning_rates": rng.uniform(size=args.steps).tolist(),
            }
        )
        if (epoch + 1) % args.cycle == 0:
            cycle = (epoch + 1) // args.cycle - 1
            for callback in (saver, collector):
                callback.on_cycle_end(cycle, {"step": first + args.steps - 1, "epoch": epoch})
        logs = {
            "loss": 0.5,
            "member_loss": rng.uniform(size=args.members),
            "member_val_loss": rng.uniform(size=args.members),
        }
        start = time.perf_counter()
        saver.on_epoch_end(epoch, logs)
        seconds.append(time.perf_counter() - start)
        size, files = written_bytes(directory, files)
        sizes.append(size)
    return sizes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1257)
    parser.add_argument(
        "--cycle", type=int, default=2, help="epochs per SGDR cycle (one snapshot per member each)"
    )
    parser.add_argument("--window", type=int, default=5)
    args = parser.parse_args()
    w = args.window
    print(
        f"{args.members} members 30-32-32-1, {args.steps} steps an epoch, a snapshot every {args.cycle} epochs"
    )
    print(
        f"{'':<26}{'bytes/epoch, first':>20}{'last':>12}{'ratio':>8}{'s/epoch, first':>16}{'last':>9}{'ratio':>8}"
    )
    with tempfile.TemporaryDirectory() as root:
        for saver_class, label in ((EpochCheckpoint, "appended (now)"), (Rewriting, "rewritten (baseline)")):
            sizes, seconds = run(saver_class, args, Path(root))
            early_b, late_b = statistics.mean(sizes[1 : w + 1]), statistics.mean(sizes[-w:])
            early_s, late_s = statistics.median(seconds[1 : w + 1]), statistics.median(seconds[-w:])
            print(
                f"{label:<26}{early_b:>20,.0f}{late_b:>12,.0f}{late_b / early_b:>8.2f}"
                f"{early_s:>16.3f}{late_s:>9.3f}{late_s / early_s:>8.2f}"
            )


if __name__ == "__main__":
    main()
