"""Ensembles vs single MLPs at equal FLOPs on bundled data sets (Kondratyuk et al., 2020, figure 1).

Writes, per data set, `benchmarks/results/compare_<name>.md` (settings, the full table, who beats whom) and
`compare_<name>.png` (accuracy vs FLOPs, one curve per width, n labelled, equal-FLOPs singles as diamonds, the
Pareto front circled), plus `compare_<name>.json` (the rows).

    .venv/bin/python benchmarks/bench_compare.py                      # digits and breast_cancer
    .venv/bin/python benchmarks/bench_compare.py --datasets wine --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ensemble.data import DataConfig, prepare_data  # noqa: E402
from ensemble.evaluation import compare  # noqa: E402
from ensemble.evaluation.plots import plot_accuracy_vs_flops  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def report(name: str, data, config: compare.CompareConfig, rows: list[dict], seconds: float) -> str:
    """The Markdown report of one data set."""
    by_flops = sorted(rows, key=lambda r: (r["flops"], r["kind"]))
    front = ", ".join(compare.row_label(r) for r in by_flops if r["pareto"])
    return (
        f"# Ensembles vs single MLPs at equal FLOPs: `{name}`\n\n"
        f"- data: {len(data.x_train)} train / {len(data.x_test)} test rows, {data.num_features} features, "
        f"task {data.task} ({data.num_classes} classes); scored on the test split "
        f"(one test row = {100 / len(data.x_test):.2f} % accuracy).\n"
        f"- models: {config.depth} hidden layers of width w in {list(config.widths)}, {config.activation}; "
        f"Adam lr={config.learning_rate}, batch {config.batch_size}, {config.epochs} epochs, "
        f"no early stopping; combiner `{config.combiner}`.\n"
        f"- per width one fused run of {config.pool_size} seeds; each row averages up to {config.subsets} "
        f"cyclic member subsets of that pool (± = spread of single subsets); equal-FLOPs singles average "
        f"{config.equal_flops_seeds} seeds.\n"
        f"- wall time {seconds:.0f} s on {os.cpu_count()} CPU cores ({platform.machine()}).\n\n"
        f"Pareto front (FLOPs, accuracy): {front}\n\n"
        f"## Each ensemble against the single MLP of equal FLOPs\n\n{compare.equal_flops_to_markdown(rows)}\n"
        f"## Who beats whom (ensemble with >= accuracy at <= FLOPs)\n\n{compare.beats_to_markdown(rows)}\n"
        f"## All rows (sorted by FLOPs)\n\n{compare.rows_to_markdown(by_flops)}"
    )


def main() -> None:
    defaults = compare.CompareConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--base-width", type=int, default=defaults.base_width)
    parser.add_argument("--combiner", default=defaults.combiner)
    parser.add_argument("--pool", type=int, default=24, help="seeds trained per width (default 24)")
    parser.add_argument("--equal-flops-seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    config = compare.CompareConfig(
        epochs=args.epochs,
        base_width=args.base_width,
        combiner=args.combiner,
        pool=args.pool,
        subsets=args.pool,
        equal_flops_seeds=args.equal_flops_seeds,
    )
    for name in args.datasets:
        data = prepare_data(DataConfig(source=name, seed=0))
        start = time.perf_counter()
        rows = compare.run_comparison(data, config)
        seconds = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)
        plot_accuracy_vs_flops(rows, args.out / f"compare_{name}.png")
        (args.out / f"compare_{name}.md").write_text(report(name, data, config, rows, seconds))
        (args.out / f"compare_{name}.json").write_text(
            json.dumps({"config": dataclasses.asdict(config), "seconds": seconds, "rows": rows}, indent=1)
        )
        print(f"{name}: {len(rows)} rows in {seconds:.0f} s -> {args.out / f'compare_{name}.md'}")


if __name__ == "__main__":
    main()
