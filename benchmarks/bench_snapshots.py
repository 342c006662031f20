"""Snapshot ensembles: the cost of collecting snapshots, and seed 004's experiment reproduced.

1. Overhead. The same fused training (digits, N members, 2 x 32 relu, SGD momentum 0.9 with an `SGDRSchedule`,
   batch 16) with and without a `SnapshotCollector` (and with one that also scores every snapshot on the
   validation split and keeps the best 3 per member), interleaved, `--repeats` times; medians. The model and the
   optimiser are reset between runs, so no run pays for tracing. Also shown: the same training with a constant
   learning rate (what the schedule itself costs). Target: collection <= 3 % extra wall time.
2. Seed 004 (blobs, 1100 rows, 3 centres, std 2, random_state 2; first 100 rows train, the other 1000 test; MLP 25
   relu + softmax; SGD momentum 0.9): a single model with lr 0.01 for 200 epochs, against a snapshot run of 500
   epochs = 10 cosine cycles of 50 epochs, lr 0.01 -> 0 per step. `--members` independent runs at once in one
   fused model (batch 25 = 4 steps per epoch); the table gives mean and spread over them. Then seed 002's users'
   way: one plain Keras model with `SnapshotEnsembleCallback` (batch 32, as in the tutorial).

    .venv/bin/python benchmarks/bench_snapshots.py                 # ~3 min on 2 busy cores
    .venv/bin/python benchmarks/bench_snapshots.py --repeats 3 --skip-keras --plot /tmp/lr.png
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ensemble.data import DataConfig, prepare_data  # noqa: E402
from ensemble.evaluation.metrics import accuracy  # noqa: E402
from ensemble.evaluation.plots import plot_learning_rate  # noqa: E402
from ensemble.model.fused import FusedMLP  # noqa: E402
from ensemble.optim.schedules import SGDRSchedule  # noqa: E402
from ensemble.snapshots.collector import SnapshotCollector  # noqa: E402
from ensemble.snapshots.keras_snapshot import (  # noqa: E402
    SnapshotEnsembleCallback,
    load_snapshots,
    predict_ensemble,
)
from ensemble.training.train import TrainConfig, fit  # noqa: E402


class TimedCollector(SnapshotCollector):
    """A `SnapshotCollector` that also adds up the wall time spent in its own hook (`seconds`)."""

    seconds = 0.0

    def on_cycle_end(self, cycle, logs=None):
        start = time.perf_counter()
        super().on_cycle_end(cycle, logs)
        self.seconds += time.perf_counter() - start


def reset(model: FusedMLP, optimizer: keras.optimizers.Optimizer, weights: list[np.ndarray]) -> None:
    """Back to the initial weights, step 0 and empty momentum slots: the next run repeats the first exactly."""
    model.set_weights(weights)
    for variable in optimizer.variables:
        variable.assign(np.zeros(variable.shape, variable.dtype))


def overhead(repeats: int, members: int, epochs: int, cycle_epochs: int) -> None:
    data = prepare_data(DataConfig(source="digits"))
    config = TrainConfig(epochs=epochs, batch_size=16, seed=0, train_metrics=False)
    steps_per_epoch = len(data.x_train) // config.batch_size
    schedule = SGDRSchedule.from_epochs(cycle_epochs, steps_per_epoch, lr_init=0.05, lr_min=1e-4)
    val = (data.x_val, data.y_val)
    base = "SGDR, no snapshots"
    variants = {  # name -> (learning rate, callbacks factory)
        "constant lr, no snapshots": (0.05, lambda: []),
        base: (schedule, lambda: []),
        "SGDR + SnapshotCollector": (schedule, lambda: [TimedCollector()]),
        "SGDR + collector, val scoring, keep_best=3": (
            schedule,
            lambda: [TimedCollector(keep_best=3, validation_data=val)],
        ),
    }
    setups = {}
    warm_up = TrainConfig(**{**config.get_config(), "epochs": cycle_epochs})
    for name, (lr, _) in variants.items():  # one model + optimiser per variant, traced by a warm-up run
        model = FusedMLP(members, data.num_features, (32, 32), "multiclass", data.num_classes, seed=0)
        optimizer = keras.optimizers.SGD(lr, momentum=0.9)
        weights = model.get_weights()
        fit(model, data.x_train, data.y_train, optimizer=optimizer, config=warm_up)
        setups[name] = (model, optimizer, weights)
    wall, cpu, hook = ({name: [] for name in variants} for _ in range(3))  # hook: seconds inside on_cycle_end
    kept = {}
    names = list(variants)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate: no fixed position
            model, optimizer, weights = setups[name]
            reset(model, optimizer, weights)
            callbacks = variants[name][1]()
            start, start_cpu = time.perf_counter(), time.process_time()
            fit(model, data.x_train, data.y_train, optimizer=optimizer, config=config, callbacks=callbacks)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            hook[name].append(callbacks[0].seconds if callbacks else 0.0)
            kept[name] = len(callbacks[0].snapshots) if callbacks else 0
    steps = epochs * steps_per_epoch
    print(
        f"\n## Snapshot collection overhead\n\ndigits: {len(data.x_train)} train rows, {data.num_features} "
        f"features; N={members} members, 2 x 32 relu, SGD momentum 0.9, batch 16, {epochs} epochs = {steps} "
        f"steps, {epochs // cycle_epochs} cycles of {cycle_epochs} epochs; {repeats} rounds of the 4 variants "
        "(order rotated each round); medians. CPU = process CPU time (all threads). 'in hook' = time inside the "
        "collector's `on_cycle_end`, the collection cost free of the machine's noise.\n"
    )
    print(
        "| variant | snapshots kept | wall s (median / min) | ms / step | CPU s | extra wall | extra CPU | in hook |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_wall, base_cpu = statistics.median(wall[base]), statistics.median(cpu[base])
    for name in variants:
        w, c, h = statistics.median(wall[name]), statistics.median(cpu[name]), statistics.median(hook[name])
        print(
            f"| {name} | {kept[name]} | {w:.2f} / {min(wall[name]):.2f} | {1000 * w / steps:.3f} | {c:.2f} "
            f"| {100 * (w / base_wall - 1):+.1f} % | {100 * (c / base_cpu - 1):+.1f} % "
            f"| {1000 * h:.1f} ms = {100 * h / w:.2f} % |"
        )
    print(
        "\nAll wall times (s): "
        + "; ".join(f"{n}: " + " ".join(f"{t:.2f}" for t in ts) for n, ts in wall.items())
    )


def seed004(members: int, skip_keras: bool, plot: str | None) -> None:
    data = prepare_data(DataConfig(source="blobs", train_rows=100, standardize=False))
    x_test, y_test = np.concatenate([data.x_val, data.x_test]), np.concatenate([data.y_val, data.y_test])

    def test_accuracy(probs_per_member):  # (N, B, C) -> per-run accuracies (N,)
        return (probs_per_member.argmax(-1) == y_test).mean(axis=1)

    start = time.perf_counter()
    single = FusedMLP(members, 2, (25,), "multiclass", 3, seed=1)
    fit(
        single,
        data.x_train,
        data.y_train,
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        config=TrainConfig(epochs=200, batch_size=25, seed=0, train_metrics=False),
    )
    single_acc = test_accuracy(single.predict_members(x_test))

    schedule = SGDRSchedule.from_epochs(50, 4, lr_init=0.01, lr_min=0.0)
    model = FusedMLP(members, 2, (25,), "multiclass", 3, seed=1)
    collector = SnapshotCollector()
    history = fit(
        model,
        data.x_train,
        data.y_train,
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        config=TrainConfig(epochs=500, batch_size=25, seed=0, train_metrics=False),
        callbacks=[collector],
    )
    seconds = time.perf_counter() - start
    snaps = collector.snapshots
    per_snapshot = {c: test_accuracy(snaps.predict_members(x_test, cycles=[c])) for c in snaps.cycles}
    if plot:
        plot_learning_rate(history.steps, history.learning_rates, collector.cycle_ends, plot)
        print(f"(learning-rate plot written to {plot})")

    def row(label, accs):
        return f"| {label} | {np.mean(accs):.4f} | {np.std(accs):.4f} | {np.min(accs):.3f} - {np.max(accs):.3f} |"

    print(
        f"\n## Seed 004 reproduction (blobs, 100 train / 1000 test rows)\n\n{members} independent runs (seeds "
        f"1..{members}) trained at once in one fused model; {seconds:.0f} s for both experiments. Test accuracy, "
        "mean / std / range over the runs.\n"
    )
    print("| model | mean | std | range |\n|---|---:|---:|---:|")
    print(row("single model, lr 0.01, 200 epochs (seed 004: 0.796)", single_acc))
    for c in snaps.cycles:
        print(row(f"snapshot {c + 1} alone (epoch {snaps.steps[c] // 4})", per_snapshot[c]))
    for k in range(1, len(snaps.cycles) + 1):
        cycles = snaps.cycles[-k:]
        accs = [accuracy(snaps.predict(x_test, members=[m], cycles=cycles), y_test) for m in range(members)]
        print(row(f"snapshot ensemble of the last {k}", accs))

    if skip_keras:
        return
    from keras.utils import to_categorical

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(25, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        metrics=["accuracy"],
    )
    with tempfile.TemporaryDirectory() as directory:
        callback = SnapshotEnsembleCallback(50, 1.0, 0.01, 0.0, 1.0, dirpath=directory, num_snapshots=None)
        start = time.perf_counter()
        model.fit(
            data.x_train,
            to_categorical(data.y_train, 3),
            epochs=500,
            batch_size=32,
            verbose=0,
            callbacks=[callback],
        )
        seconds = time.perf_counter() - start
        models = load_snapshots(directory)
        final = accuracy(models[-1].predict(x_test, verbose=0), y_test)
        ensemble = accuracy(predict_ensemble(models, x_test), y_test)
    print(
        f"\nPlain Keras, one model, `SnapshotEnsembleCallback(50, 1.0, 0.01, 0.0, 1.0)`, batch 32, 500 epochs "
        f"({seconds:.0f} s, {len(models)} snapshot files): final model {final:.3f}, ensemble of all "
        f"{len(models)} snapshots {ensemble:.3f}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--members", type=int, default=10, help="members of the overhead run and seed 004 runs"
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--cycle-epochs", type=int, default=12)
    parser.add_argument("--skip-keras", action="store_true", help="skip the plain Keras seed 004 run")
    parser.add_argument("--plot", help="write the seed 004 learning-rate curve (as used) to this PNG")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_snapshots: {os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f}")
    overhead(args.repeats, args.members, args.epochs, args.cycle_epochs)
    seed004(args.members, args.skip_keras, args.plot)


if __name__ == "__main__":
    main()
