"""`RunRecord`: one row per epoch, appended to a JSON Lines file and read back into the same object."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.training.record import RunRecord, RunRecorder, step_runs
from ensemble.training.train import TrainConfig, fit


def recorded_run(epochs: int = 4, steps: int = 5, members: int = 3) -> RunRecord:
    """A record as `fit` leaves it: float32 per-member values, float scalars, a cycle end mid-epoch."""
    rng = np.random.default_rng(0)
    record, step = RunRecord(), 0
    for epoch in range(epochs):
        for size in (2, steps - 2):  # two compiled calls an epoch
            record.add_steps(list(range(step + 1, step + 1 + size)), rng.uniform(1e-4, 0.1, size).tolist())
            step += size
        if epoch % 2 == 1:
            record.add_cycle_end(step - 1)
        member_loss = rng.uniform(size=members).astype("float32")
        logs = {
            "loss": float(member_loss.mean()),
            "member_loss": member_loss,
            "val_ensemble_accuracy": np.float64(rng.uniform()),
            "unit_gradients": [rng.normal(size=(members, 4)).astype("float32")],
        }
        record.end_epoch(epoch, logs, **({"snapshots": {"added": [[0, epoch]]}} if epoch == 1 else {}))
    return record


def test_a_record_appended_in_parts_reads_back_equal_to_the_record_written(tmp_path):
    record = recorded_run()
    path = tmp_path / "record.jsonl"
    first = RunRecord(
        record.epochs[:2],
        record.steps[:10],
        record.learning_rates[:10],
        record.cycle_ends[:1],
        record.notes[:2],
    )
    first.bounds = record.bounds[:2]
    size = first.append_to(path)
    before = path.read_bytes()
    assert record.append_to(path, start=2) == path.stat().st_size > size

    assert RunRecord.read(path) == record  # every value exact, floats included
    assert path.read_bytes().startswith(before)  # appended: the first rows' bytes are untouched
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert rows[1]["steps"] == [[6, 10]] and rows[1]["cycle_ends"] == [9] and rows[1]["snapshots"]
    assert rows[0]["logs"]["member_loss"] == record.epochs[0][1]["member_loss"]  # per member, as a list


def test_a_row_cut_short_by_a_crash_and_rows_past_a_length_are_left_out(tmp_path):
    record = recorded_run()
    path = tmp_path / "record.jsonl"
    record.append_to(path)
    two_rows = len(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    with open(path, "ab") as file:
        file.write(b'{"epoch": 4, "logs": {"lo')  # the process died mid-write

    assert RunRecord.read(path).epochs == record.epochs
    assert [epoch for epoch, _ in RunRecord.read(path, two_rows).epochs] == [0, 1]
    assert RunRecord.read(path, two_rows).steps == record.steps[:10]


def test_fit_records_each_step_in_the_row_of_its_epoch_with_the_cycle_ends_it_reached():
    """16 steps an epoch, cycles of 24 steps: the first ends mid-epoch 1; the history's lists are the record's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    schedule = SGDRSchedule(24, lr_init=0.05, lr_min=0.001)
    model = FusedMLP(2, 3, (4,), num_classes=2, seed=0)
    recorder = RunRecorder()
    history = fit(
        model,
        x,
        y,
        optimizer=keras.optimizers.SGD(schedule),
        config=TrainConfig(epochs=3, batch_size=4, steps_per_call=5, jit_compile=False),
        callbacks=[recorder],
    )

    record = history.record
    assert recorder.record == record
    assert history.steps is record.steps and history.learning_rates is record.learning_rates
    assert [record.row(i)["steps"] for i in range(3)] == [[[1, 16]], [[17, 32]], [[33, 48]]]
    assert [record.row(i)["cycle_ends"] for i in range(3)] == [[], [24], [48]]
    np.testing.assert_allclose(
        record.learning_rates, [float(schedule(s - 1)) for s in range(1, 49)], rtol=1e-6
    )
    assert [logs["loss"] for _, logs in record.epochs] == history.history["loss"]


def test_step_runs_and_from_flat_split_the_steps_over_the_epochs():
    assert step_runs([1, 2, 3, 7, 8, 10]) == [[1, 3], [7, 8], [10, 10]]
    record = recorded_run()
    flat = RunRecord.from_flat(record.epochs, record.steps, record.learning_rates, record.cycle_ends)
    without_notes = [{k: v for k, v in record.row(i).items() if k != "snapshots"} for i in range(4)]
    assert [flat.row(i) for i in range(4)] == without_notes


def test_mismatched_steps_and_learning_rates_are_refused():
    with pytest.raises(ValueError, match="one entry per step. Received: 2 steps, 1 learning rates"):
        RunRecord().add_steps([1, 2], [0.1])
