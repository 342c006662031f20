"""Ensembles of small MLPs against single larger MLPs at equal FLOPs (Kondratyuk et al., 2020, figure 1).

For every width `w` in `base_width * width_multipliers` one fused run trains a pool of `pool` (default
`max_members`) MLPs of width `w` that differ only in their seeds. Members never interact (the summed loss
gives each member its own gradient and Adam is elementwise), and member `n`'s initial weights and data order
depend only on its own seed and index, so the first `n` members of the pool are exactly an `n`-member ensemble
trained on its own: every ensemble size `n = 1..max_members` comes from one run. The `n = 1` "ensemble" is the
single model of width `w`.

A "single large model of equal FLOPs" for the ensemble `n x w` is the single MLP of the same depth whose width
`equal_flops_width(...)` is the largest that costs no more FLOPs per sample than the ensemble. Those widths
all differ, so each is its own fused run (of `equal_flops_seeds` independently seeded copies), unless the
width is one of the compared widths, whose pool is reused.

Noise: a test set of a few hundred rows moves accuracy in steps of 0.3-0.5 %. Each row therefore averages its
metrics over up to `subsets` member subsets of the pool (cyclic windows `[s, s+1, ..., s+n-1] mod pool`, the
first being the first `n` members); `accuracy_std` is the spread of single subsets (not the standard error of
their mean). A pool larger than `max_members` gives more, less overlapping subsets at the cost of a wider
fused run. Single-model rows average over members of the pool, as the paper reports the median single model.

Shapes: `(N, B, C)` = members, test rows, classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np

from ensemble.checks import check_int, is_int
from ensemble.data import PreparedData
from ensemble.evaluation.metrics import check_combiner, evaluate_classification, metrics_for
from ensemble.model.flops import ensemble_flops, equal_flops_width, mlp_flops, pareto_front
from ensemble.model.fused import FusedMLP
from ensemble.training.train import TrainConfig, fit

KINDS: tuple[str, ...] = ("single", "ensemble", "equal_flops_single")
_METRICS = metrics_for(
    "classification"
)  # every classification metric of `ensemble.evaluation.metrics.METRICS`
ROW_KEYS: tuple[str, ...] = (
    "kind",
    "width",
    "members",
    "flops",
    "params",
    *_METRICS,
    "accuracy_std",
    "subsets",
    "matches",
    "pareto",
)


@dataclass(frozen=True)
class CompareConfig:
    """What the comparison trains and how it scores it.

    Attributes:
        base_width: hidden width `w` of the smallest MLP.
        width_multipliers: the widths compared are `base_width * m`, e.g. `w, 2w, 4w, 8w`.
        max_members: largest ensemble size; ensembles of `1..max_members` members are scored per width.
        depth: number of hidden layers (all of the same width).
        epochs: training epochs of every model (no early stopping: all models get the same budget).
        batch_size: rows per member per Adam step.
        learning_rate: Adam learning rate.
        combiner: a name in `ensemble.evaluation.metrics.COMBINERS`: `"mean"` (arithmetic mean of probabilities) or
            `"geometric"` (renormalised geometric mean, the paper's eq. 1, the default here; the pipeline passes
            its `evaluation.combiner`).
        seed: base seed of weights (member `k` uses `member_seed(seed, k)`) and data order.
        activation: hidden-layer activation.
        bins: ECE bins.
        equal_flops_members: ensemble sizes `n` (each in `2..max_members`) for which the single MLP of equal
            FLOPs is trained, for every width; `()` trains none.
        equal_flops_seeds: independently seeded copies of each equal-FLOPs single MLP (metrics are averaged).
        subsets: member subsets averaged per row (cyclic windows of the pool; 1 = the first `n` members only).
        pool: seeds trained per width (>= max_members); None means `max_members`.
    """

    base_width: int = 16
    width_multipliers: tuple[int, ...] = (1, 2, 4, 8)
    max_members: int = 8
    depth: int = 2
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    combiner: str = "geometric"
    seed: int = 0
    activation: str = "relu"
    bins: int = 15
    equal_flops_members: tuple[int, ...] = (2, 4, 8)
    equal_flops_seeds: int = 3
    subsets: int = 8
    pool: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "width_multipliers", tuple(self.width_multipliers))
        object.__setattr__(self, "equal_flops_members", tuple(self.equal_flops_members))
        positive = ("base_width", "max_members", "depth", "epochs", "batch_size", "bins", "equal_flops_seeds")
        for name in (*positive, "subsets"):
            check_int(getattr(self, name), name)
        multipliers = self.width_multipliers
        if (
            not multipliers
            or not all(is_int(m, 1) for m in multipliers)
            or len(set(multipliers)) != len(multipliers)
        ):
            raise ValueError(
                "Argument `width_multipliers` must be a non-empty tuple of distinct ints >= 1. "
                f"Received: width_multipliers={multipliers!r}"
            )
        if not all(is_int(n, 1) and 2 <= n <= self.max_members for n in self.equal_flops_members):
            raise ValueError(
                f"Every entry of `equal_flops_members` must be an int in [2, max_members={self.max_members}] "
                f"(pass `equal_flops_members=()` to train none). Received: equal_flops_members="
                f"{self.equal_flops_members!r}"
            )
        if isinstance(self.learning_rate, bool) or not self.learning_rate > 0:
            raise ValueError(
                f"Argument `learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        check_combiner(self.combiner, "combiner")
        check_int(self.seed, "seed", minimum=0)
        if self.pool is not None and not (is_int(self.pool, 1) and self.pool >= self.max_members):
            raise ValueError(
                f"Argument `pool` must be None or an int >= max_members={self.max_members}. "
                f"Received: pool={self.pool!r}"
            )
        keras.activations.get(self.activation)  # fails early on an unknown name

    @property
    def widths(self) -> tuple[int, ...]:
        """The hidden widths compared, `base_width * m` for each multiplier, ascending."""
        return tuple(sorted(self.base_width * m for m in self.width_multipliers))

    @property
    def pool_size(self) -> int:
        """Seeds trained per width: `pool`, or `max_members` when `pool` is None."""
        return self.max_members if self.pool is None else int(self.pool)

    def get_config(self) -> dict:
        return asdict(self)


def mlp_params(input_dim: int, hidden_units: Sequence[int], output_dim: int) -> int:
    """Weights and biases of one dense MLP: `sum over layers (in * out + out)`."""
    dims = [input_dim, *hidden_units, output_dim]
    return sum(d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:], strict=True))


def member_windows(pool: int, size: int, count: int) -> list[list[int]]:
    """Up to `count` distinct cyclic windows of `size` consecutive members of a pool of `pool`.

    Window `s` is `[s, s+1, ..., s+size-1] mod pool`; window 0 is the first `size` members. A pool has `pool`
    distinct windows of a size below `pool` and one of size `pool`.
    """
    if not 1 <= size <= pool:
        raise ValueError(f"Argument `size` must be in [1, pool={pool}]. Received: size={size}")
    distinct = 1 if size == pool else pool
    return [[(start + k) % pool for k in range(size)] for start in range(min(count, distinct))]


def train_pool(data: PreparedData, width: int, members: int, config: CompareConfig) -> np.ndarray:
    """Trains `members` seeds of one MLP width as one fused run; returns test log-probabilities `(N, B, C)`."""
    model = FusedMLP(
        members,
        data.num_features,
        hidden_units=[width] * config.depth,
        task=data.task,
        num_classes=max(data.num_classes, 2),
        activation=config.activation,
        seed=config.seed,
    )
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, train_metrics=False
    )
    fit(
        model,
        data.x_train,
        data.y_train,
        optimizer=keras.optimizers.Adam(config.learning_rate),
        config=train_config,
    )
    return model.predict_members(data.x_test, log_probs=True)  # (N, B, C)


def score_windows(
    member_log_probs: np.ndarray, y: np.ndarray, windows: list[list[int]], config: CompareConfig
) -> dict:
    """Metrics of the combined ensemble averaged over member `windows`, plus `accuracy_std` and `subsets`."""
    scores = [
        evaluate_classification(
            member_log_probs, y, method=config.combiner, bins=config.bins, members=window, log_probs=True
        )
        for window in windows
    ]
    result = {key: float(np.mean([s[key] for s in scores])) for key in _METRICS}
    result["accuracy_std"] = float(np.std([s["accuracy"] for s in scores]))
    result["subsets"] = len(windows)
    return result


def run_comparison(data: PreparedData, config: CompareConfig = CompareConfig()) -> list[dict]:
    """Trains and scores single MLPs, ensembles and equal-FLOPs single MLPs on a classification task.

    Args:
        data: prepared splits; models train on `x_train` and are scored on `x_test` (`x_val` is not used).
        config: see `CompareConfig`.

    Returns:
        One dict per model with the keys of `ROW_KEYS`: `kind` (`"single"`: one MLP of a compared width,
        `"ensemble"`: `members >= 2` of that width, `"equal_flops_single"`: the single MLP whose FLOPs match
        an ensemble's), `width`, `members`, `flops` (forward FLOPs per sample of the whole model), `params`,
        `accuracy`, `accuracy_std`, `nll`, `brier`, `ece` (test set, averaged over `subsets` member subsets),
        `matches` (for equal-FLOPs rows, the `(members, width)` ensembles they match; else `[]`) and `pareto`
        (on the (FLOPs, accuracy) Pareto front of all rows). Ordered by width, then members; equal-FLOPs rows
        last.
    """
    if data.task not in ("binary", "multiclass"):
        raise ValueError(f"The comparison needs a classification task. Received: task={data.task!r}")
    d, out, depth = data.num_features, data.num_outputs, config.depth
    rows, pools = [], {}
    for width in config.widths:
        probs = pools[width] = train_pool(data, width, config.pool_size, config)  # (pool, B, C)
        for n in range(1, config.max_members + 1):
            windows = member_windows(config.pool_size, n, config.subsets)
            rows.append(
                {
                    "kind": "single" if n == 1 else "ensemble",
                    "width": width,
                    "members": n,
                    "flops": ensemble_flops(d, [width] * depth, out, n),
                    "params": n * mlp_params(d, [width] * depth, out),
                    **score_windows(probs, data.y_test, windows, config),
                    "matches": [],
                }
            )

    matches: dict[int, list[tuple[int, int]]] = {}
    for width in config.widths:
        for n in config.equal_flops_members:
            budget = ensemble_flops(d, [width] * depth, out, n)
            matches.setdefault(equal_flops_width(d, depth, out, budget), []).append((n, width))
    for width, matched in sorted(matches.items()):
        probs = pools.get(width)  # an equal-FLOPs width that is also a compared width reuses its pool
        if probs is None:
            probs = train_pool(data, width, config.equal_flops_seeds, config)  # (S, B, C)
        windows = member_windows(len(probs), 1, config.subsets)
        rows.append(
            {
                "kind": "equal_flops_single",
                "width": width,
                "members": 1,
                "flops": mlp_flops(d, [width] * depth, out),
                "params": mlp_params(d, [width] * depth, out),
                **score_windows(probs, data.y_test, windows, config),
                "matches": matched,
            }
        )

    front = pareto_front([(row["flops"], row["accuracy"]) for row in rows])
    return [
        {key: {**row, "pareto": on}[key] for key in ROW_KEYS} for row, on in zip(rows, front, strict=True)
    ]


def row_label(row: dict) -> str:
    """`"4×16"` for an ensemble of 4 MLPs of width 16; `"1×47 (≈4×16)"` for an equal-FLOPs single MLP."""
    label = f"{row['members']}×{row['width']}"
    if row["kind"] == "equal_flops_single" and row.get("matches"):
        label += " (≈" + ", ".join(f"{n}×{w}" for n, w in row["matches"]) + ")"
    return label


def rows_to_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table of comparison rows (in the given order); the Pareto-front rows are marked with ★."""
    lines = [
        "| kind | model (n×width) | FLOPs/sample | params | accuracy | ± | NLL | Brier | ECE | Pareto |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row_label(row)} | {row['flops']:,} | {row['params']:,} "
            f"| {row['accuracy']:.4f} | {row.get('accuracy_std', 0.0):.4f} | {row['nll']:.4f} "
            f"| {row['brier']:.4f} | {row['ece']:.4f} | {'★' if row.get('pareto') else ''} |"
        )
    return "\n".join(lines) + "\n"


def beats_at_equal_flops(rows: Sequence[dict]) -> list[tuple[dict, dict]]:
    """Pairs `(ensemble, single)` where the ensemble (>= 2 members) is at least as accurate at no more FLOPs.

    Singles are the rows of kind `"single"` and `"equal_flops_single"`. Pairs are ordered by the single's
    FLOPs, then the ensemble's.
    """
    singles = sorted((r for r in rows if r["kind"] != "ensemble"), key=lambda r: (r["flops"], r["width"]))
    ensembles = sorted((r for r in rows if r["kind"] == "ensemble"), key=lambda r: (r["flops"], r["width"]))
    return [
        (ens, single)
        for single in singles
        for ens in ensembles
        if ens["flops"] <= single["flops"] and ens["accuracy"] >= single["accuracy"]
    ]


def beats_to_markdown(rows: Sequence[dict]) -> str:
    """Per single MLP: how many ensembles beat it at <= FLOPs, and the cheapest one (a Markdown table)."""
    pairs = beats_at_equal_flops(rows)
    lines = [
        "| single model | FLOPs | accuracy | ensembles at <= FLOPs with >= accuracy | cheapest of them "
        "| its FLOPs | its accuracy |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for single in sorted((r for r in rows if r["kind"] != "ensemble"), key=lambda r: r["flops"]):
        winners = [ens for ens, s in pairs if s is single]
        cheapest = min(winners, key=lambda r: r["flops"]) if winners else None
        tail = (
            f"{row_label(cheapest)} | {cheapest['flops']:,} | {cheapest['accuracy']:.4f}"
            if cheapest
            else "— | — | —"
        )
        head = f"| {row_label(single)} | {single['flops']:,} | {single['accuracy']:.4f} | {len(winners)}"
        lines.append(f"{head} | {tail} |")
    return "\n".join(lines) + "\n"


def equal_flops_pairs(rows: Sequence[dict]) -> list[tuple[dict, dict]]:
    """Pairs `(ensemble, single)` of each ensemble with the single MLP trained to match its FLOPs.

    The single is the widest MLP within the ensemble's FLOPs, so it is never more costly (usually ~1 %
    cheaper). Ordered by the ensemble's FLOPs.
    """
    ensembles = {(r["members"], r["width"]): r for r in rows if r["kind"] == "ensemble"}
    pairs = [
        (ensembles[match], single)
        for single in rows
        if single["kind"] == "equal_flops_single"
        for match in map(tuple, single["matches"])
        if match in ensembles
    ]
    return sorted(pairs, key=lambda pair: pair[0]["flops"])


def equal_flops_to_markdown(rows: Sequence[dict]) -> str:
    """Head to head: each ensemble against its equal-FLOPs single MLP (accuracy, NLL, ECE), as Markdown."""
    lines = [
        "| ensemble | single of equal FLOPs | FLOPs (ens / single) | accuracy (ens / single) | Δ accuracy "
        "| NLL (ens / single) | ECE (ens / single) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for ens, single in equal_flops_pairs(rows):
        delta = round(ens["accuracy"] - single["accuracy"], 12) + 0.0  # + 0.0: no "-0.0000"
        lines.append(
            f"| {row_label(ens)} | 1×{single['width']} | {ens['flops']:,} / {single['flops']:,} "
            f"| {ens['accuracy']:.4f} / {single['accuracy']:.4f} | {delta:+.4f} "
            f"| {ens['nll']:.4f} / {single['nll']:.4f} | {ens['ece']:.4f} / {single['ece']:.4f} |"
        )
    return "\n".join(lines) + "\n"
