"""`EpochCheckpoint`: each epoch appends one record row and writes only new snapshots; a resumed run ends with the
record and snapshots of an uninterrupted one, also after a crash between appending and swapping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.training.checkpoint import EpochCheckpoint, load_checkpoint, read_record, write_record
from ensemble.training.record import RECORD_FILE
from ensemble.training.train import TrainConfig, fit

ROWS, BATCH = 64, 4  # 16 steps an epoch; one SGDR cycle an epoch, so one new snapshot per epoch


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 3)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def collector(data, keep_best=None) -> SnapshotCollector:
    return SnapshotCollector(keep_best=keep_best, validation_data=data)


def train(
    data, directory: Path, epochs: int, keep_best=None, resume=False, saver=EpochCheckpoint, callbacks=()
) -> EpochCheckpoint:
    """Train to `epochs` with a `saver` checkpointing into `directory`; with `resume`, from its checkpoint."""
    if resume:
        model, optimizer, state = load_checkpoint(directory)
    else:
        model = FusedMLP(3, 3, (4,), num_classes=2, seed=0)
        optimizer = keras.optimizers.Adam(SGDRSchedule(ROWS // BATCH, lr_init=0.05, lr_min=0.001))
        state = {"epoch": 0}
    snapshots = collector(data, keep_best)
    checkpoint = saver(directory, optimizer, snapshots, data_order={"seed": 0})
    if resume:
        checkpoint.resume()
    fit(
        model,
        *data,
        optimizer=optimizer,
        config=TrainConfig(epochs=epochs, batch_size=BATCH, steps_per_call=8, jit_compile=False),
        validation_data=data,
        initial_epoch=state["epoch"],
        callbacks=[checkpoint, *callbacks, snapshots],
    )
    return checkpoint


class DiskWrites(keras.callbacks.Callback):
    """After each epoch's checkpoint: the bytes it put on disk, from the directory's files alone. A file with a
    new inode or changed bytes counts whole; a file with the same inode whose old bytes are a prefix of its new
    ones counts what was appended; a hard link of an unchanged file counts nothing."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory, self.files, self.written, self.contents = directory, {}, [], []

    def on_epoch_end(self, epoch, logs=None):
        files = {
            path.relative_to(self.directory): (path.stat().st_ino, path.read_bytes())
            for path in sorted(self.directory.rglob("*"))
            if path.is_file()
        }
        written = 0
        for name, (inode, content) in files.items():
            old_inode, old = self.files.get(name, (None, b""))
            written += (
                len(content) - len(old) if inode == old_inode and content.startswith(old) else len(content)
            )
        self.files = files
        self.written.append(written)
        self.contents.append(files)


def test_bytes_written_per_epoch_do_not_grow_with_the_epoch_and_earlier_bytes_stay(data, tmp_path):
    directory = tmp_path / "checkpoint"
    disk = DiskWrites(directory)
    train(data, directory, 10, callbacks=[disk])

    # Epoch 2 and epoch 10 write the same ~20 KB: the weights, the optimiser state, state.json, one row, one
    # snapshot file (rows differ by a few bytes of float digits). Rewriting the record and every snapshot each
    # epoch instead adds ~3 KB per epoch: ~24 KB more at epoch 10 than at epoch 2.
    assert abs(disk.written[9] - disk.written[1]) <= 200, disk.written
    snapshot = disk.contents[1][Path("snapshots/cycle-0001.npz")]
    assert (
        disk.contents[9][Path("snapshots/cycle-0001.npz")] == snapshot
    )  # same inode, same bytes: never rewritten
    record = Path(RECORD_FILE)
    assert disk.contents[9][record][0] == disk.contents[1][record][0]  # one file, appended to
    assert disk.contents[9][record][1].startswith(disk.contents[1][record][1])
    assert len(read_record(directory)["epochs"]) == 10
    assert sorted(read_record(directory)["snapshots"].weights) == [
        (m, c) for m in range(3) for c in range(10)
    ]


def assert_same_record(ours: dict, theirs: dict) -> None:
    assert ours["steps"] == theirs["steps"] and ours["cycle_ends"] == theirs["cycle_ends"]
    np.testing.assert_allclose(ours["learning_rates"], theirs["learning_rates"], rtol=1e-7)
    assert [e for e, _ in ours["epochs"]] == [e for e, _ in theirs["epochs"]]
    for (_, a), (_, b) in zip(ours["epochs"], theirs["epochs"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7)
    a, b = ours["snapshots"], theirs["snapshots"]
    assert sorted(a.weights) == sorted(b.weights) and a.steps == b.steps
    for key in b.weights:
        for wa, wb in zip(a.weights[key], b.weights[key], strict=True):
            np.testing.assert_allclose(wa, wb, atol=1e-6)
        assert a.scores[key] == pytest.approx(b.scores[key], rel=1e-5)


def test_a_resumed_run_ends_with_the_record_and_snapshots_of_an_uninterrupted_run(data, tmp_path):
    """keep_best=2 drops snapshots as better ones come: the drops before the resume are replayed from the record."""
    train(data, tmp_path / "whole", 5, keep_best=2)
    train(data, tmp_path / "split", 3, keep_best=2)
    train(data, tmp_path / "split", 5, keep_best=2, resume=True)
    assert_same_record(read_record(tmp_path / "split"), read_record(tmp_path / "whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split", "whole"]


class CrashBeforeSwap(EpochCheckpoint):
    """Dies after appending epoch 3's row to the record file it shares with the previous checkpoint, before the
    new checkpoint replaces that one (as a SIGKILL at that moment would)."""

    def write_record(self, directory):
        written = super().write_record(directory)
        if len(self.record.epochs) == 3:
            raise KeyboardInterrupt("killed")
        return written


def test_a_row_appended_before_a_crash_is_not_part_of_the_checkpoint_and_the_resume_writes_it_once(
    data, tmp_path
):
    train(data, tmp_path / "whole", 5)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(data, crashed, 5, saver=CrashBeforeSwap)
    assert (crashed / RECORD_FILE).read_text().count("\n") == 3  # the shared file holds the third row
    assert [e for e, _ in read_record(crashed)["epochs"]] == [0, 1]  # the checkpoint does not

    train(data, crashed, 5, resume=True)
    assert (crashed / RECORD_FILE).read_text().count("\n") == 5
    assert_same_record(read_record(crashed), read_record(tmp_path / "whole"))


def test_a_whole_record_written_at_once_reads_back_as_plain_lists(data, tmp_path):
    """`write_record` (merged shards): the steps split over the epochs, the snapshots kept."""
    saver = train(data, tmp_path / "run", 2)
    saved = read_record(tmp_path / "run")
    target = tmp_path / "merged"
    target.mkdir()
    record = saver.record
    write_record(
        target, record.epochs, record.steps, record.learning_rates, saved["snapshots"], saved["cycle_ends"]
    )
    merged = read_record(target)
    assert_same_record(merged, saved)
    assert merged["record"].row(1)["steps"] == [[17, 32]]


def test_a_checkpoint_of_the_earlier_layout_resumes_and_its_next_save_writes_the_record_layout(
    data, tmp_path
):
    """`record.json` (the whole record) and `snapshots/snapshots.npz`, as checkpoints were written before."""
    train(data, tmp_path / "whole", 4, keep_best=2)
    old = tmp_path / "old"
    train(data, old, 2, keep_best=2)
    saved = read_record(old)
    (old / RECORD_FILE).unlink()
    shutil.rmtree(old / "snapshots")
    legacy = {key: saved[key] for key in ("epochs", "steps", "learning_rates", "cycle_ends")}
    (old / "record.json").write_text(json.dumps(legacy))
    saved["snapshots"].save(old / "snapshots")
    state = json.loads((old / "state.json").read_text())
    (old / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "record_bytes"}))

    train(data, old, 4, keep_best=2, resume=True)
    assert (old / RECORD_FILE).read_text().count("\n") == 4 and not (old / "record.json").exists()
    assert_same_record(read_record(old), read_record(tmp_path / "whole"))
