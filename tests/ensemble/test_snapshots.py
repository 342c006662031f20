import math

import keras
import numpy as np
import pytest

from ensemble.data import DataConfig, prepare_data
from ensemble.evaluation.metrics import COMBINERS, accuracy, combine
from ensemble.evaluation.plots import plot_learning_rate
from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.snapshots.collector import SnapshotCollector, Snapshots, select_best
from ensemble.training.train import TrainConfig, fit

MEMBERS, BATCH = 3, 10


@pytest.fixture(scope="module")
def blobs():
    """Seed 004's data: make_blobs(1100, 3 centres, std 2, random_state 2), the first 100 rows train."""
    data = prepare_data(DataConfig(source="blobs", train_rows=100, standardize=False))
    x_test = np.concatenate([data.x_val, data.x_test])  # seed 004 tests on all 1000 held-out rows
    y_test = np.concatenate([data.y_val, data.y_test])
    return data, x_test, y_test


def new_model(seed=0, members=MEMBERS):
    return FusedMLP(members, 2, (25,), task="multiclass", num_classes=3, seed=seed)


def train(data, schedule, epochs, callbacks=(), seed=0):
    model = new_model(seed)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, seed=0, train_metrics=False)
    history = fit(model, data.x_train, data.y_train, optimizer=optimizer, config=config, callbacks=callbacks)
    return model, history


@pytest.fixture(scope="module")
def run(blobs):
    """10 steps per epoch; cycles of 8, 16, 32 (ending mid-epoch) and 64 steps: 120 steps = 12 epochs."""
    data, _, _ = blobs
    schedule = SGDRSchedule(8, 2.0, lr_init=0.05, lr_min=0.001, lr_multiplier=0.8)
    val = (data.x_val, data.y_val)
    everything = SnapshotCollector(validation_data=val)
    best = SnapshotCollector(skip_first=1, keep_best=2, validation_data=val)
    model, history = train(data, schedule, 12, callbacks=[everything, best])
    return schedule, model, history, everything, best


def reference_lrs(total_steps, cycle_length, multiplier, lr_init, lr_min, lr_multiplier):
    lrs, start, k, length = [], 0, 0, cycle_length
    for step in range(total_steps):
        if step - start >= length:
            start, k = step, k + 1
            length = math.ceil(round(cycle_length * multiplier**k, 9))
        cosine = 0.5 * (1 + math.cos(math.pi * (step - start) / length))
        lrs.append(lr_multiplier**k * (lr_min + (lr_init - lr_min) * cosine))
    return lrs


def test_recorded_learning_rate_equals_the_schedule_formula_at_every_step(run, tmp_path):
    schedule, _, history, _, _ = run
    assert history.steps == list(range(1, 121))
    np.testing.assert_allclose(
        history.learning_rates, reference_lrs(120, 8, 2.0, 0.05, 0.001, 0.8), rtol=1e-6
    )
    path = plot_learning_rate(
        history.steps, history.learning_rates, schedule.cycle_ends(120), tmp_path / "lr.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_snapshot_per_cycle_the_last_one_included(run):
    schedule, _, _, everything, _ = run
    snapshots = everything.snapshots
    assert everything.cycle_ends == schedule.cycle_ends(120) == [8, 24, 56, 120]
    assert snapshots.cycles == [0, 1, 2, 3]
    assert snapshots.steps == {0: 8, 1: 24, 2: 56, 3: 120}
    assert len(snapshots) == MEMBERS * 4
    assert set(snapshots.weights) == {(m, c) for m in range(MEMBERS) for c in range(4)}


def test_last_snapshot_equals_the_final_weights(run):
    _, model, _, everything, _ = run
    for member in range(MEMBERS):
        for got, want in zip(
            everything.snapshots.weights[(member, 3)], model.member_weights(member), strict=True
        ):
            np.testing.assert_array_equal(got, want)


def test_snapshot_equals_a_separate_run_stopped_at_that_cycle_end(blobs):
    data, _, _ = blobs
    schedule = SGDRSchedule.from_epochs(3, 10, lr_init=0.05, lr_min=0.001)
    collector = SnapshotCollector()
    train(data, schedule, 9, callbacks=[collector])  # 3 cycles of 3 epochs
    alone, _ = train(
        data, SGDRSchedule.from_epochs(3, 10, lr_init=0.05, lr_min=0.001), 3
    )  # the first cycle only
    for member in range(MEMBERS):
        for got, want in zip(
            collector.snapshots.weights[(member, 0)], alone.member_weights(member), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_predict_members_equals_the_fused_model_with_those_weights(run, blobs):
    _, model, _, everything, _ = run
    _, x_test, _ = blobs
    got = everything.snapshots.predict_members(x_test, cycles=[3])  # (N, B, C), keys ordered by member
    np.testing.assert_allclose(got, model.predict_members(x_test), rtol=1e-5, atol=1e-6)


def test_predict_combines_any_subset_with_the_ensemble_combiner(run, blobs):
    _, _, _, everything, _ = run
    _, x_test, _ = blobs
    snapshots = everything.snapshots
    keys = snapshots.keys(members=[0, 2], cycles=snapshots.cycles[-2:])
    assert keys == [(0, 2), (2, 2), (0, 3), (2, 3)]
    one_by_one = np.stack([snapshots.predict_members(x_test, [m], [c])[0] for m, c in keys])
    for method in ("mean", "geometric"):
        got = snapshots.predict(x_test, members=[0, 2], cycles=[2, 3], method=method)
        np.testing.assert_allclose(got, combine(one_by_one, method=method), rtol=1e-6)


@pytest.mark.parametrize("method", COMBINERS)
def test_growing_ensemble_scores_combine_the_cycles_so_far_with_the_given_combiner(run, blobs, method):
    _, _, _, everything, _ = run
    _, x_test, y_test = blobs
    snapshots = everything.snapshots
    got = snapshots.growing_ensemble_scores(x_test, y_test, method=method)
    expected = []
    for k in range(len(snapshots.cycles)):  # reference: member by member, then the combiner
        keys = snapshots.keys(cycles=snapshots.cycles[: k + 1])
        one_by_one = np.stack([snapshots.predict_members(x_test, [m], [c])[0] for m, c in keys])  # (K, B, C)
        expected.append(
            {"accuracy": accuracy(combine(one_by_one, method=method), y_test), "count": len(keys)}
        )
    assert [s["count"] for s in got] == [MEMBERS * (k + 1) for k in range(len(snapshots.cycles))]
    assert [s["count"] for s in got] == [e["count"] for e in expected]
    np.testing.assert_allclose([s["accuracy"] for s in got], [e["accuracy"] for e in expected], atol=1e-12)


def test_growing_ensemble_scores_differ_between_combiners_and_refuse_an_unknown_one(run, blobs):
    """The run's combiner matters here (the snapshot curve used the mean whatever the config said, issue 19)."""
    _, _, _, everything, _ = run
    _, x_test, y_test = blobs
    curves = {m: everything.snapshots.growing_ensemble_scores(x_test, y_test, method=m) for m in COMBINERS}
    assert curves["mean"] != curves["geometric"]
    with pytest.raises(
        ValueError, match=r"must be one of \('mean', 'geometric'\). Received: method='median'"
    ):
        everything.snapshots.growing_ensemble_scores(x_test, y_test, method="median")


def test_member_model_predicts_like_the_snapshot(run, blobs):
    _, _, _, everything, _ = run
    _, x_test, _ = blobs
    sequential = everything.snapshots.member_model(1, 2)
    want = everything.snapshots.predict_members(x_test[:50], [1], [2])[0]
    np.testing.assert_allclose(sequential.predict(x_test[:50], verbose=0), want, rtol=1e-5, atol=1e-6)


def test_skip_first_and_keep_best_keep_each_members_best_later_cycles(run):
    _, _, _, everything, best = run
    scores = {k: s["val_loss"] for k, s in everything.snapshots.scores.items() if k[1] >= 1}
    expected = {
        (m, c)
        for m in range(MEMBERS)
        for c in sorted((c for mm, c in scores if mm == m), key=lambda c: scores[(m, c)])[:2]
    }
    assert set(best.snapshots.weights) == expected
    assert best.cycle_ends == everything.cycle_ends
    for key in expected:
        np.testing.assert_array_equal(best.snapshots.weights[key][0], everything.snapshots.weights[key][0])


def test_select_best_breaks_ties_towards_the_later_cycle():
    scores = {(0, 0): 0.5, (0, 1): 0.9, (0, 2): 0.9, (1, 0): 0.1}
    assert select_best(scores, 1, "max") == {(0, 2), (1, 0)}
    assert select_best(scores, 1, "min") == {(0, 0), (1, 0)}


def test_save_and_load_round_trip(run, blobs, tmp_path):
    _, _, _, everything, _ = run
    _, x_test, _ = blobs
    everything.snapshots.save(tmp_path / "snaps")
    loaded = Snapshots.load(tmp_path / "snaps")
    assert loaded.steps == everything.snapshots.steps
    assert loaded.scores == everything.snapshots.scores
    np.testing.assert_array_equal(loaded.predict(x_test), everything.snapshots.predict(x_test))


def test_run_ending_inside_a_cycle_is_rejected_before_training(blobs):
    data, _, _ = blobs
    schedule = SGDRSchedule.from_epochs(2, 10, lr_init=0.05)
    model = new_model()
    before = model.member_weights(0)[0]
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    with pytest.raises(ValueError, match=r"ends at step 50, inside an SGDR cycle.*last cycle end is step 40"):
        fit(
            model,
            data.x_train,
            data.y_train,
            optimizer=optimizer,
            config=TrainConfig(epochs=5, batch_size=BATCH),
            callbacks=[SnapshotCollector()],
        )
    np.testing.assert_array_equal(model.member_weights(0)[0], before)
    collector = SnapshotCollector(partial_cycle="ignore")
    fit(
        model,
        data.x_train,
        data.y_train,
        optimizer=optimizer,
        config=TrainConfig(epochs=5, batch_size=BATCH, train_metrics=False),
        callbacks=[collector],
    )
    assert collector.snapshots.cycles == [0, 1]


def test_collector_without_a_cyclic_schedule_is_rejected(blobs):
    data, _, _ = blobs
    with pytest.raises(ValueError, match="SGDRSchedule"):
        fit(
            new_model(),
            data.x_train,
            data.y_train,
            optimizer=keras.optimizers.SGD(0.01),
            config=TrainConfig(epochs=1, batch_size=BATCH),
            callbacks=[SnapshotCollector()],
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip_first": -1}, "skip_first"),
        ({"keep_best": 0, "validation_data": ([[0.0, 0.0]], [0])}, "keep_best"),
        ({"keep_best": 2}, "validation_data"),
        ({"monitor": "accuracy"}, "monitor"),
        ({"partial_cycle": "drop"}, "partial_cycle"),
    ],
)
def test_invalid_collector_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=f"Argument `{match}`"):
        SnapshotCollector(**kwargs)


def test_seed004_snapshot_ensemble_is_at_least_as_accurate_as_the_final_model(blobs):
    """Seed 004: MLP 25 relu, SGD momentum 0.9, cosine annealing lr 0.01 -> 0, 10 cycles of 50 epochs, 500 epochs.

    Five independent runs in one fused model (batch 25 = 4 steps per epoch); averaged over them, the ensemble of
    the 10 snapshots is at least as accurate on the 1000 test rows as the final model (the last snapshot).
    """
    data, x_test, y_test = blobs
    schedule = SGDRSchedule.from_epochs(50, 4, lr_init=0.01, lr_min=0.0)
    model = new_model(seed=1, members=5)
    collector = SnapshotCollector()
    config = TrainConfig(epochs=500, batch_size=25, seed=0, train_metrics=False)
    fit(
        model,
        data.x_train,
        data.y_train,
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        config=config,
        callbacks=[collector],
    )
    snapshots = collector.snapshots
    assert snapshots.cycles == list(range(10))
    final = np.mean([accuracy(snapshots.predict(x_test, [m], [9]), y_test) for m in range(5)])
    ensemble = np.mean([accuracy(snapshots.predict(x_test, [m]), y_test) for m in range(5)])
    print(f"seed 004 reproduction: final model {final:.4f}, snapshot ensemble of 10 {ensemble:.4f}")
    assert final > 0.75
    assert ensemble >= final
