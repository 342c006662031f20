"""Growth vs from-scratch: a grown ensemble vs the same members trained at the final width from the start.

Both runs use the same members (seeds), optimiser, batch size and plateau rule (`EarlyStopping` on the monitored
validation metric with the same `min_delta` / `patience`, at most `--epochs` epochs per round / run). Prints, per
seed and on average: test accuracy (ensemble = mean of member probabilities; and the mean member), total
training FLOPs (`3 * forward FLOPs * samples`), and the cost of a split as % of a round's training time, plus the
one-off re-trace of the compiled step loop that a new width costs.

    .venv/bin/python benchmarks/bench_growth.py                          # digits, 8 members, 2 -> 32 units
    .venv/bin/python benchmarks/bench_growth.py --batch-size 32 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ensemble import metrics, train  # noqa: E402
from ensemble.data import DataConfig, prepare_data  # noqa: E402
from ensemble.flops import ensemble_flops, training_flops  # noqa: E402
from ensemble.fused import FusedMLP  # noqa: E402
from ensemble.growth import grow_model  # noqa: E402
from ensemble.growth_rounds import GrowthConfig, grow_rounds  # noqa: E402

tf.get_logger().setLevel(
    "ERROR"
)  # each new width re-traces the step loop once: expected, not worth a warning


def scores_on_test(model: FusedMLP, data) -> tuple[float, float]:
    """(ensemble accuracy, mean member accuracy) on the test split."""
    probs = model.predict_members(data.x_test)  # (N, B, C)
    members = float(np.mean([metrics.accuracy(p, data.y_test) for p in probs]))
    return metrics.accuracy(metrics.combine(probs), data.y_test), members


def trace_seconds(model: FusedMLP, optimizer, data, config: train.TrainConfig) -> float:
    """Wall time to trace the compiled step loop of a model (what every new width costs once)."""
    run_steps = train.compiled_steps(model, optimizer, config)
    steps = min(len(data.x_train) // config.batch_size, config.steps_per_call)
    indices = tf.zeros((steps, model.members, config.batch_size), tf.int32)
    start = time.perf_counter()
    run_steps.get_concrete_function(
        tf.constant(data.x_train), tf.constant(data.y_train.astype("int32")), indices, tf.constant(steps)
    )
    return time.perf_counter() - start


def run_seed(data, args, seed: int) -> dict:
    def new_model(widths) -> FusedMLP:
        return FusedMLP(
            args.members,
            data.num_features,
            widths,
            task=data.task,
            num_classes=data.num_classes,
            seed=1000 * seed,
        )

    config = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, train_metrics=False)
    growth = GrowthConfig(
        monitor=args.monitor,
        min_delta=args.min_delta,
        patience=args.patience,
        max_rounds=args.rounds,
        max_width=args.start_width * 2**args.rounds,
        strategy="all",
        seed=seed,
    )
    start = time.perf_counter()
    grown, optimizer, rounds = grow_rounds(
        new_model([args.start_width]), keras.optimizers.Adam(args.lr), data, config, growth
    )
    grow_seconds = time.perf_counter() - start
    probe_model, probe_opt = grow_model(
        grown, optimizer, {0: "all"}, rng=0
    )  # a fresh width, to time one re-trace
    retrace = trace_seconds(probe_model, probe_opt, data, config)

    scratch = new_model(grown.hidden_units)
    plateau = keras.callbacks.EarlyStopping(
        monitor=growth.monitor, min_delta=growth.min_delta, patience=growth.patience, mode=growth.mode
    )
    curve = []  # (epoch, test ensemble accuracy) of the scratch run, to find when it passes the grown model
    on_epoch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: curve.append(scores_on_test(scratch, data)[0])
    )
    start = time.perf_counter()
    history = train.fit(
        scratch,
        data.x_train,
        data.y_train,
        optimizer=keras.optimizers.Adam(args.lr),
        config=config,
        validation_data=(data.x_val, data.y_val),
        callbacks=[plateau, on_epoch],
    )
    scratch_seconds = time.perf_counter() - start
    samples = (len(data.x_train) // args.batch_size) * args.batch_size
    flops = ensemble_flops(data.num_features, scratch.hidden_units, scratch.output_dim, args.members)
    grown_acc = scores_on_test(grown, data)[0]
    match = next((e + 1 for e, acc in enumerate(curve) if acc >= grown_acc), None)
    split_pct = [100 * r.split_seconds / r.train_seconds for r in rounds if r.new_widths]
    return {
        "seed": seed,
        "rounds": rounds,
        "grown": scores_on_test(grown, data),
        "grown_flops": sum(r.train_flops for r in rounds),
        "grown_epochs": sum(r.epochs_trained for r in rounds),
        "grown_seconds": grow_seconds,
        "scratch": scores_on_test(scratch, data),
        "scratch_flops": training_flops(flops, len(history.epoch) * samples),
        "scratch_epochs": len(history.epoch),
        "scratch_seconds": scratch_seconds,
        "scratch_match_flops": None if match is None else training_flops(flops, match * samples),
        "split_ms": 1000 * np.mean([r.split_seconds for r in rounds if r.new_widths]),
        "round_s": np.mean([r.train_seconds for r in rounds]),
        "split_pct": float(np.mean(split_pct)),
        "split_pct_max": float(np.max(split_pct)),
        "retrace_ms": 1000 * retrace,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--start-width", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="splits (each doubles the layer)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=30, help="cap per round / for the scratch run")
    parser.add_argument("--monitor", default="val_accuracy")
    parser.add_argument("--min-delta", type=float, default=0.002)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    data = prepare_data(DataConfig(source=args.dataset, seed=0))
    print(
        f"{args.dataset}: {len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test rows; "
        f"{args.members} members, Adam lr={args.lr}, batch {args.batch_size}, plateau {args.monitor} "
        f"min_delta={args.min_delta} patience={args.patience}, <= {args.epochs} epochs per round; "
        f"{os.cpu_count()} CPU cores ({platform.machine()})\n"
    )
    results = []
    for seed in args.seeds:
        result = run_seed(data, args, seed)
        results.append(result)
        print(f"seed {seed}: rounds")
        print("  round  widths  epochs  val_before  val_after  train_s  split_ms  split_%_of_round  MFLOPs")
        for r in result["rounds"]:
            after = "" if r.val_after_split is None else f"{r.val_after_split:.4f}"
            pct = f"{100 * r.split_seconds / r.train_seconds:.2f}" if r.new_widths else ""
            print(
                f"  {r.round:>5}  {'-'.join(map(str, r.widths)):>6}  {r.epochs_trained:>6}  "
                f"{r.val_before_split:>10.4f}  {after:>9}  {r.train_seconds:>7.2f}  "
                f"{1000 * r.split_seconds:>8.1f}  {pct:>16}  {r.train_flops / 1e6:>6.0f}"
            )
        for kind in ("grown", "scratch"):
            ens, mem = result[kind]
            print(
                f"  {kind:>7}: test ensemble acc {ens:.4f}, mean member {mem:.4f}, "
                f"{result[kind + '_epochs']} epochs, {result[kind + '_flops'] / 1e9:.3f} GFLOPs, "
                f"{result[kind + '_seconds']:.1f} s"
            )
        matched = result["scratch_match_flops"]
        print(
            "  from scratch first reached the grown test ensemble accuracy "
            + ("never" if matched is None else f"after {matched / 1e9:.3f} GFLOPs")
        )
        print(
            f"  split: {result['split_ms']:.1f} ms = {result['split_pct']:.2f} % of a round on average "
            f"(max {result['split_pct_max']:.2f} %); re-tracing the step loop for a new width: "
            f"{result['retrace_ms']:.0f} ms once per width\n"
        )

    def mean(key, i=None):
        return float(np.mean([r[key] if i is None else r[key][i] for r in results]))

    one_row = 1 / len(data.x_test)
    print(f"mean over seeds {args.seeds} (one test row = {100 * one_row:.2f} pp):")
    for kind in ("grown", "scratch"):
        print(
            f"  {kind:>7}: ensemble acc {mean(kind, 0):.4f}, mean member {mean(kind, 1):.4f}, "
            f"{mean(kind + '_flops') / 1e9:.3f} GFLOPs"
        )
    ratio = mean("grown_flops") / mean("scratch_flops")
    reaches = mean("grown", 0) >= mean("scratch", 0) - one_row
    print(
        f"  split cost {mean('split_pct'):.2f} % of a round (target < 1 %: {'met' if mean('split_pct') < 1 else 'NOT met'})"
    )
    print(
        f"  growth used {100 * ratio:.0f} % of the from-scratch training FLOPs and "
        f"{'reached' if reaches else 'did NOT reach'} its test ensemble accuracy (within one test row): "
        f"{mean('grown', 0):.4f} vs {mean('scratch', 0):.4f}"
    )


if __name__ == "__main__":
    main()
