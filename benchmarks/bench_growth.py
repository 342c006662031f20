"""Growth vs the real alternative: a from-scratch width sweep (2, 4, ..., cap), the best width chosen on validation.

A user who does not know the width trains one ensemble per width and keeps the best on validation; that sweep's
cost is the sum of its runs' training FLOPs. Growth starts at `--start-width` and splits at plateaus until it
stops (the width cap; with `--stop-without-gain` also after a round without validation gain; for `splitting`, when
no unit has a negative splitting index). Every run, grown or swept, is `grow_rounds` under the same rule: train
until the plateau (`min_delta`, `patience` epochs on the mean member `val_accuracy`, the round's first epoch being
the first best, at most `--epochs` per round), then `--anneal-epochs` epochs of cosine annealing to 1 % of the
learning rate, so every round (and every sweep run) ends converged. A sweep run is one round without a split. Same
members (seeds), optimiser, batch size and data order everywhere. `splitting` splits without outgoing-weight
offsets (`--splitting-noise 0`): its directions break the symmetry, and the split keeps the function to O(delta^2).

Data sets: digits and breast_cancer (bundled), and `teacher`: labels of a random 1-hidden-layer ReLU teacher with
`--teacher-width` units (3 classes, 16 Gaussian features), so the width the task needs is known.

Writes `--out` (a list of rows per data set and strategy: `dataset`, `strategy`, `grown_test_accuracy`,
`sweep_best_test_accuracy`, `grown_train_flops`, `sweep_train_flops`, `grown_final_widths`, `sweep_best_width`,
ratios and `per_seed` values, the sweep's runs and growth's rounds included) and `--plot` (test accuracy against
cumulative training FLOPs: growth's path vs every width of the sweep). Test accuracy is the ensemble's (mean of
member probabilities); FLOPs are `3 * forward FLOPs * samples` (`ensemble.model.flops.training_flops`).

    .venv/bin/python benchmarks/bench_growth.py                      # the README's figures (about 20 min here)
    .venv/bin/python benchmarks/bench_growth.py --datasets digits --seeds 0 --strategies splitting
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from ensemble.data import DataConfig, prepare_data  # noqa: E402
from ensemble.growth.rounds import GrowthConfig, grow_rounds  # noqa: E402
from ensemble.model.flops import ensemble_flops, training_flops  # noqa: E402
from ensemble.model.fused import FusedMLP  # noqa: E402
from ensemble.training import train  # noqa: E402

tf.get_logger().setLevel(
    "ERROR"
)  # each new width re-traces the step loop once: expected, not worth a warning

RESULTS = Path(__file__).parent / "results"


def teacher_frame(
    width: int, rows: int = 4000, features: int = 16, classes: int = 3, seed: int = 0
) -> pd.DataFrame:
    """Rows labelled by a random ReLU teacher `x -> argmax(relu(x W1 + b1) W2)` with `width` hidden units."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    w1, b1 = rng.normal(size=(features, width)) / np.sqrt(features), 0.5 * rng.normal(size=width)
    w2 = rng.normal(size=(width, classes))
    y = np.argmax(np.maximum(x @ w1 + b1, 0) @ w2, axis=1)
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(features)]).assign(target=y)


def load(name: str, args) -> object:
    if name == "teacher":
        return prepare_data(DataConfig(source="teacher", seed=0), teacher_frame(args.teacher_width))
    return prepare_data(DataConfig(source=name, seed=0))


class TestCurve(keras.callbacks.Callback):
    """Per epoch: the model's width, the training FLOPs of that epoch and the test ensemble accuracy."""

    def __init__(self, data, samples_per_epoch: int):
        super().__init__()
        self.data, self.samples, self.points = data, samples_per_epoch, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        model = self.model
        forward = ensemble_flops(model.input_dim, model.hidden_units, model.output_dim, model.members)
        accuracy = float(
            train.evaluate_members(model, self.data.x_test, self.data.y_test)["ensemble_accuracy"]
        )
        self.points.append((max(model.hidden_units), training_flops(forward, self.samples), accuracy))


def run(data, args, seed: int, width: int, growth: GrowthConfig) -> dict:
    """One `grow_rounds` run from `width` (a sweep run when `growth.max_rounds == 0`)."""
    model = FusedMLP(
        args.members,
        data.num_features,
        [width],
        task=data.task,
        num_classes=data.num_classes,
        seed=1000 * seed,
    )
    config = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, train_metrics=False)
    samples = (len(data.x_train) // args.batch_size) * args.batch_size
    curve = TestCurve(data, samples)
    start = time.perf_counter()
    model, _, rounds = grow_rounds(
        model, keras.optimizers.Adam(args.lr), data, config, growth, callbacks=[curve]
    )
    seconds = time.perf_counter() - start
    val = train.evaluate_members(model, data.x_val, data.y_val)["ensemble_accuracy"]
    flops = np.cumsum([f for _, f, _ in curve.points])
    ends = [
        i
        for i, (w, _, _) in enumerate(curve.points)
        if i + 1 == len(curve.points) or curve.points[i + 1][0] != w
    ]
    return {
        "width": max(model.hidden_units),
        "val_accuracy": float(val),
        "test_accuracy": curve.points[-1][2],
        "train_flops": int(sum(r.train_flops for r in rounds)),
        "epochs": int(sum(r.epochs_trained for r in rounds)),
        "seconds": round(seconds, 1),
        "path": [
            {"width": curve.points[i][0], "train_flops": int(flops[i]), "test_accuracy": curve.points[i][2]}
            for i in ends
        ],
        "rounds": [
            {k: v for k, v in r.as_dict().items() if k not in ("split_units", "split_index")} for r in rounds
        ],
        "units_split": [
            {layer: [len(u) for u in units][0] for layer, units in (r.split_units or {}).items()}
            for r in rounds
        ],
        "stop_reason": rounds[-1].stop_reason,
    }


def growth_config(args, strategy: str, seed: int, max_rounds: int) -> GrowthConfig:
    return GrowthConfig(
        monitor="val_accuracy",
        min_delta=args.min_delta,
        patience=args.patience,
        max_width=args.cap,
        max_rounds=max_rounds,
        strategy=strategy,
        units_per_split=4 if strategy == "targeted" else None,
        anneal_epochs=args.anneal_epochs,
        stop_without_gain=args.stop_without_gain,
        lr_width_scaling=args.lr_width_scaling,
        delta=args.delta,
        noise=args.splitting_noise if strategy == "splitting" else args.noise,
        seed=seed,
    )


def bench_dataset(name: str, args) -> list[dict]:
    data = load(name, args)
    print(
        f"\n{name}: {len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test rows, "
        f"{data.num_features} features, {data.num_classes} classes",
        flush=True,
    )
    widths = [args.start_width * 2**i for i in range(20) if args.start_width * 2**i <= args.cap]
    per_strategy = {s: [] for s in args.strategies}
    for seed in args.seeds:
        sweep = [run(data, args, seed, w, growth_config(args, "all", seed, 0)) for w in widths]
        best = max(sweep, key=lambda r: (r["val_accuracy"], -r["width"]))  # ties: the narrower
        sweep_flops = sum(r["train_flops"] for r in sweep)
        print(
            f"  seed {seed} sweep: "
            + ", ".join(
                f"w{r['width']} val {r['val_accuracy']:.3f} test {r['test_accuracy']:.3f}" for r in sweep
            )
            + f"; best on val w{best['width']}, {sweep_flops / 1e9:.3f} GFLOPs in all",
            flush=True,
        )
        for strategy in args.strategies:
            grown = run(
                data, args, seed, args.start_width, growth_config(args, strategy, seed, args.max_rounds)
            )
            print(
                f"  seed {seed} {strategy:>9}: widths {' -> '.join(str(p['width']) for p in grown['path'])} "
                f"(stop: {grown['stop_reason']}), test {grown['test_accuracy']:.3f} vs sweep {best['test_accuracy']:.3f}, "
                f"{grown['train_flops'] / 1e9:.3f} GFLOPs = {grown['train_flops'] / sweep_flops:.2f}x the sweep, "
                f"{grown['seconds']:.0f} s",
                flush=True,
            )
            per_strategy[strategy].append(
                {
                    "seed": seed,
                    "grown_test_accuracy": grown["test_accuracy"],
                    "sweep_best_test_accuracy": best["test_accuracy"],
                    "grown_train_flops": grown["train_flops"],
                    "sweep_train_flops": sweep_flops,
                    "sweep_best_width_train_flops": best["train_flops"],
                    "grown_final_width": grown["width"],
                    "sweep_best_width": best["width"],
                    "grown": grown,
                    "sweep": [{k: v for k, v in r.items() if k not in ("rounds",)} for r in sweep],
                }
            )
    rows = []
    for strategy, seeds in per_strategy.items():

        def mean(key, seeds=seeds):
            return float(np.mean([s[key] for s in seeds]))

        gap = 100 * (mean("grown_test_accuracy") - mean("sweep_best_test_accuracy"))
        ratio = mean("grown_train_flops") / mean("sweep_train_flops")
        rows.append(
            {
                "dataset": name,
                "strategy": strategy,
                "grown_test_accuracy": mean("grown_test_accuracy"),
                "sweep_best_test_accuracy": mean("sweep_best_test_accuracy"),
                "grown_train_flops": mean("grown_train_flops"),
                "sweep_train_flops": mean("sweep_train_flops"),
                "sweep_best_width_train_flops": mean("sweep_best_width_train_flops"),
                "grown_final_widths": [s["grown_final_width"] for s in seeds],
                "sweep_best_width": [s["sweep_best_width"] for s in seeds],
                "accuracy_gap_pp": gap,
                "flops_ratio": ratio,
                "target_met": bool(gap >= -0.5 and ratio <= 0.8),
                "test_rows": len(data.x_test),
                "per_seed": seeds,
            }
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Per data set: test accuracy vs cumulative training FLOPs; growth's paths (seed 0, one line per strategy) and
    each width of the sweep (its own run's FLOPs, seed 0), plus the whole sweep's cost as a vertical line."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(5 * len(datasets), 4.2))
    for i, name in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        first = [r for r in rows if r["dataset"] == name]
        seed0 = first[0]["per_seed"][0]
        sweep = seed0["sweep"]
        ax.plot(
            [s["train_flops"] for s in sweep],
            [s["test_accuracy"] for s in sweep],
            "ks--",
            label="sweep (each width)",
        )
        for s in sweep:
            ax.annotate(
                str(s["width"]),
                (s["train_flops"], s["test_accuracy"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
        ax.axvline(seed0["sweep_train_flops"], color="grey", lw=0.8, ls=":", label="whole sweep's cost")
        for row in first:
            path_points = row["per_seed"][0]["grown"]["path"]
            ax.plot(
                [p["train_flops"] for p in path_points],
                [p["test_accuracy"] for p in path_points],
                "o-",
                label=f"growth: {row['strategy']}",
            )
            last = path_points[-1]
            ax.annotate(
                str(last["width"]),
                (last["train_flops"], last["test_accuracy"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training FLOPs (cumulative)")
        ax.set_ylabel("test ensemble accuracy")
        ax.set_title(f"{name} (seed 0)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "teacher"])
    parser.add_argument("--strategies", nargs="+", default=["all", "splitting"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--start-width", type=int, default=2)
    parser.add_argument("--cap", type=int, default=64, help="width cap of growth and the sweep's widest run")
    parser.add_argument("--max-rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=40, help="cap per round (before the anneal)")
    parser.add_argument("--anneal-epochs", type=int, default=3)
    parser.add_argument("--min-delta", type=float, default=0.002)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--delta", type=float, default=0.1, help="splitting: step along the eigenvector")
    parser.add_argument("--noise", type=float, default=1.0, help="outgoing-weight offsets of the copies")
    parser.add_argument(
        "--splitting-noise",
        type=float,
        default=0.0,
        help="`noise` of `splitting`, whose directions already break the symmetry (offsets on copies with "
        "different incoming weights change the function to first order in delta)",
    )
    parser.add_argument(
        "--stop-without-gain",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop growing after a round without validation gain (otherwise at the width cap)",
    )
    parser.add_argument("--lr-width-scaling", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--teacher-width", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "growth.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "growth.png")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from --out")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        return
    print(
        f"{args.members} members, Adam lr={args.lr}, batch {args.batch_size}, widths {args.start_width}..{args.cap}, "
        f"plateau val_accuracy min_delta={args.min_delta} patience={args.patience} (<= {args.epochs} epochs) + "
        f"{args.anneal_epochs} anneal epochs per round, lr_width_scaling={args.lr_width_scaling}, seeds {args.seeds}; "
        f"{os.cpu_count()} CPU cores ({platform.machine()})",
        flush=True,
    )
    start = time.perf_counter()
    rows = [row for name in args.datasets for row in bench_dataset(name, args)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps([{**row, "settings": settings} for row in rows], indent=1))
    plot(rows, args.plot)
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {args.out} and {args.plot}\n")
    print(
        "| data set | strategy | grown test acc | sweep best test acc | gap (pp) | grown GFLOPs | sweep GFLOPs | ratio | "
        "grown widths | sweep best widths | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['strategy']} | {r['grown_test_accuracy']:.4f} | {r['sweep_best_test_accuracy']:.4f} | "
            f"{r['accuracy_gap_pp']:+.2f} | {r['grown_train_flops'] / 1e9:.3f} | {r['sweep_train_flops'] / 1e9:.3f} | "
            f"{r['flops_ratio']:.2f} | {r['grown_final_widths']} | {r['sweep_best_width']} | "
            f"{'met' if r['target_met'] else 'missed'} |"
        )


if __name__ == "__main__":
    main()
