import math

import keras
import numpy as np
import pytest

from ensemble.snapshots.keras_snapshot import (
    SnapshotEnsembleCallback,
    load_snapshots,
    predict_ensemble,
    snapshot_files,
)


@pytest.fixture(scope="module")
def blobs():
    """Seed 004's data (first 100 rows train, one-hot targets as in the tutorial) and 200 test rows."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=1100, centers=3, n_features=2, cluster_std=2, random_state=2)
    y = keras.utils.to_categorical(y)
    return x[:100].astype("float32"), y[:100], x[100:300].astype("float32"), y[100:300]


def seed004_model(seed=0, lr=0.01):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(25, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.SGD(lr, momentum=0.9),
        metrics=["accuracy"],
    )
    return model


def test_seed002_readme_usage_with_one_changed_import(blobs, tmp_path, monkeypatch):
    from ensemble.snapshots.keras_snapshot import (
        SnapshotEnsembleCallback,  # was: from snapshot_ensemble import ...
    )

    monkeypatch.chdir(tmp_path)
    x, y, x_test, _ = blobs
    model = seed004_model()  # Compiled TensorFlow 2 Keras model
    # Train the Keras model with Cosine Annealing + Snapshot Ensembling
    snapshotCB = SnapshotEnsembleCallback()  # noqa: N806 (seed 002's spelling)
    model.fit(x, y, epochs=25, batch_size=32, verbose=0, callbacks=[snapshotCB])
    # Snapshotted models are then automatically saved (default: `Ensemble/`)
    assert [p.name for p in snapshot_files("Ensemble/")] == ["Model-001.keras", "Model-002.keras"]
    models = load_snapshots("Ensemble/")
    probs = predict_ensemble(models, x_test)
    assert probs.shape == (len(x_test), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        models[-1].predict(x_test, verbose=0), model.predict(x_test, verbose=0), rtol=1e-6
    )


def reference_lrs(total_steps, lengths, lr_init, lr_min, lr_multiplier):
    """Plain loop over explicit cycle lengths (steps)."""
    lrs, k, start = [], 0, 0
    for step in range(total_steps):
        if step - start >= lengths[k]:
            start, k = step, k + 1
        cosine = 0.5 * (1 + math.cos(math.pi * (step - start) / lengths[k]))
        lrs.append(lr_multiplier**k * (lr_min + (lr_init - lr_min) * cosine))
    return lrs


def test_learning_rates_follow_the_schedule_and_every_cycle_is_saved(blobs, tmp_path):
    x, y, _, _ = blobs
    callback = SnapshotEnsembleCallback(1.25, 1.4, 0.05, 0.001, 0.8, dirpath=tmp_path, num_snapshots=None)
    seed004_model().fit(x, y, epochs=9, batch_size=25, verbose=0, callbacks=[callback])
    # 4 steps per epoch: cycles of 5, 7, 10 (9.8) and 14 (13.72) steps end at steps 5, 12, 22, 36 = 9 epochs
    assert callback.cycle_ends == [5, 12, 22, 36]
    assert callback.steps == list(range(1, 37))
    np.testing.assert_allclose(
        callback.learning_rates, reference_lrs(36, [5, 7, 10, 14], 0.05, 0.001, 0.8), rtol=1e-6
    )
    assert [p.name for p in callback.snapshot_paths] == [f"Model-00{c}.keras" for c in (1, 2, 3, 4)]
    assert snapshot_files(tmp_path) == callback.snapshot_paths
    assert callback.plot_learning_rate(tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_recorded_learning_rates_are_the_ones_the_optimizer_applied(tmp_path):
    """Plain SGD on loss w**2: each step multiplies w by (1 - 2 lr), so w_T = prod(1 - 2 lr_t)."""
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")]
    )
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.5))  # the callback replaces this learning rate
    callback = SnapshotEnsembleCallback(1.0, 2.0, 0.1, 0.01, 0.5, ensemble=False)
    model.fit(np.ones((8, 1)), np.zeros((8, 1)), epochs=7, batch_size=2, verbose=0, callbacks=[callback])
    assert len(callback.learning_rates) == 28 and callback.cycle_ends == [4, 12, 28]
    expected = np.prod(1.0 - 2.0 * np.asarray(callback.learning_rates, "float64"))
    np.testing.assert_allclose(model.get_weights()[0][0, 0], expected, rtol=1e-4)


def test_snapshot_equals_a_separate_run_stopped_at_the_first_cycle_end(blobs, tmp_path):
    x, y, _, _ = blobs
    options = dict(cycle_length=2, cycle_length_multiplier=1.0, lr_init=0.05, lr_min=0.001, lr_multiplier=0.9)
    model = seed004_model(seed=3)
    callback = SnapshotEnsembleCallback(**options, dirpath=tmp_path / "a", save_format="weights")
    model.fit(x, y, epochs=6, batch_size=25, shuffle=False, verbose=0, callbacks=[callback])
    alone = seed004_model(seed=3)
    alone.fit(
        x,
        y,
        epochs=2,
        batch_size=25,
        shuffle=False,
        verbose=0,
        callbacks=[SnapshotEnsembleCallback(**options, dirpath=tmp_path / "b")],
    )
    first, _, last = load_snapshots(tmp_path / "a", model=model)
    for got, want in zip(first.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(last.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_run_ending_inside_a_cycle_is_rejected_before_the_first_step(blobs, tmp_path):
    x, y, _, _ = blobs
    model = seed004_model()
    before = model.get_weights()
    callback = SnapshotEnsembleCallback(dirpath=tmp_path)  # cycles of 10 and 15 epochs
    with pytest.raises(
        ValueError, match=r"ends inside SGDR cycle 1.*40 steps = 10 epochs or 100 steps = 25 epochs"
    ):
        model.fit(x, y, epochs=12, batch_size=25, verbose=0, callbacks=[callback])
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    ignoring = SnapshotEnsembleCallback(dirpath=tmp_path, partial_cycle="ignore")
    model.fit(x, y, epochs=12, batch_size=25, verbose=0, callbacks=[ignoring])
    assert [p.name for p in snapshot_files(tmp_path)] == ["Model-001.keras"]


def test_num_snapshots_keeps_the_files_of_the_last_cycles_and_a_new_run_replaces_old_files(blobs, tmp_path):
    x, y, _, _ = blobs
    options = {"num_snapshots": 2, "dirpath": str(tmp_path), "model_prefix": "Snap"}
    callback = SnapshotEnsembleCallback(1, 1.0, ensemble_options=options)  # seed 002's options dict
    seed004_model().fit(x, y, epochs=4, batch_size=50, verbose=0, callbacks=[callback])
    assert [p.name for p in snapshot_files(tmp_path, "Snap")] == ["Snap-003.keras", "Snap-004.keras"]
    again = SnapshotEnsembleCallback(1, 1.0, ensemble_options=options)
    seed004_model().fit(x, y, epochs=1, batch_size=50, verbose=0, callbacks=[again])
    assert [p.name for p in snapshot_files(tmp_path, "Snap")] == ["Snap-001.keras"]


def test_cycle_ends_between_callbacks_of_steps_per_execution_are_rejected(blobs, tmp_path):
    x, y, _, _ = blobs
    model = seed004_model()
    model.compile(loss="categorical_crossentropy", optimizer="sgd", steps_per_execution=3)
    with pytest.raises(ValueError, match="steps_per_execution=3"):
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=25,
            verbose=0,
            callbacks=[SnapshotEnsembleCallback(0.5, 1.0, dirpath=tmp_path)],
        )


def test_predict_ensemble_combines_member_probabilities(blobs, tmp_path):
    x, y, x_test, _ = blobs
    models = [seed004_model(seed) for seed in (0, 1)]
    probs = np.stack([m.predict(x_test, verbose=0) for m in models])
    np.testing.assert_allclose(predict_ensemble(models, x_test), probs.mean(0), rtol=1e-6)
    geometric = np.exp(np.log(probs).mean(0))
    np.testing.assert_allclose(
        predict_ensemble(models, x_test, "geometric"), geometric / geometric.sum(1, keepdims=True), rtol=1e-5
    )


def test_get_config_round_trip():
    callback = SnapshotEnsembleCallback(
        5, 2.0, 0.1, 0.001, 0.7, num_snapshots=3, dirpath="snaps", save_format="weights"
    )
    again = SnapshotEnsembleCallback.from_config(callback.get_config())
    assert again.get_config() == callback.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, SnapshotEnsembleCallback) and restored.get_config() == callback.get_config()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cycle_length": 0}, "cycle_length"),
        ({"cycle_length_multiplier": 0.5}, "cycle_length_multiplier"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"num_snapshots": 0}, "num_snapshots"),
        ({"save_format": "h5"}, "save_format"),
        ({"partial_cycle": "drop"}, "partial_cycle"),
        ({"ensemble_options": {"dir": "x"}}, "ensemble_options"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_argument_name(kwargs, match):
    with pytest.raises(ValueError, match=f"Argument `{match}`"):
        SnapshotEnsembleCallback(**kwargs)
