"""PNG figures: ensemble accuracy against FLOPs (Kondratyuk et al., fig. 1) and the SGDR learning rate as used.

Figures are drawn on a `matplotlib.figure.Figure` with the Agg canvas, never through `pyplot`, so no global figure
state or interactive backend is involved (safe inside Prefect worker threads).
"""

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ensemble.model.flops import pareto_front

_ROW_KEYS = ("kind", "width", "members", "flops", "accuracy")
_KINDS = ("single", "ensemble", "equal_flops_single")


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_accuracy_vs_flops(rows: list[dict], path) -> Path:
    """Plots accuracy against forward FLOPs (log scale), one curve per member width.

    Each point is annotated with its number of members `n`; single models are drawn as black-edged stars and the
    points on the (FLOPs, accuracy) Pareto front are circled.

    Args:
        rows: One dict per model with keys `kind` (`"single"`, `"ensemble"` or `"equal_flops_single"`),
            `width`, `members`, `flops` (> 0) and `accuracy`; further keys such as `nll` and `ece` are ignored.
            `"equal_flops_single"` rows (a single MLP as costly as an ensemble) are drawn as diamonds, off the
            per-width curves.
        path: Where to write the PNG; parent folders are created.

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError(f"Argument `rows` must hold at least one row. Received: rows={rows!r}")
    for row in rows:
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ValueError(
                f"Argument `rows` must have keys {_ROW_KEYS}; missing {missing}. Received: row={row!r}"
            )
        if row["kind"] not in _KINDS:
            raise ValueError(f"Row key `kind` must be one of {_KINDS}. Received: kind={row['kind']!r}")
        if not row["flops"] > 0:
            raise ValueError(f"Row key `flops` must be > 0 for a log axis. Received: flops={row['flops']!r}")

    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    curve_rows = [row for row in rows if row["kind"] != "equal_flops_single"]
    for width in sorted({row["width"] for row in curve_rows}):
        curve = sorted((row for row in curve_rows if row["width"] == width), key=lambda row: row["flops"])
        ax.plot([r["flops"] for r in curve], [r["accuracy"] for r in curve], marker="o", label=f"w={width}")
    for row in curve_rows:
        ax.annotate(
            str(row["members"]),
            (row["flops"], row["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    singles = [row for row in rows if row["kind"] == "single"]
    if singles:
        ax.scatter(
            [r["flops"] for r in singles],
            [r["accuracy"] for r in singles],
            marker="*",
            s=160,
            color="gold",
            edgecolors="black",
            zorder=3,
            label="single model",
        )
    matched = [row for row in rows if row["kind"] == "equal_flops_single"]
    if matched:
        ax.scatter(
            [r["flops"] for r in matched],
            [r["accuracy"] for r in matched],
            marker="D",
            s=50,
            color="white",
            edgecolors="black",
            zorder=3,
            label="single model, equal FLOPs",
        )
    front = [
        row
        for row, on in zip(rows, pareto_front([(r["flops"], r["accuracy"]) for r in rows]), strict=True)
        if on
    ]
    ax.scatter(
        [r["flops"] for r in front],
        [r["accuracy"] for r in front],
        s=260,
        facecolors="none",
        edgecolors="red",
        linewidths=1.5,
        zorder=4,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("Forward FLOPs per sample (log scale)")
    ax.set_ylabel("Accuracy")
    ax.set_title("Accuracy vs FLOPs (numbers: ensemble size n)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_rate(steps: Sequence[int], lrs: Sequence[float], cycle_ends: Sequence[int], path) -> Path:
    """Plots the learning rate per step with a dashed vertical line at each cycle end.

    Args:
        steps: Training steps `(T,)`.
        lrs: Learning rate used at each step `(T,)`.
        cycle_ends: Steps at which an SGDR cycle ends (where snapshots are taken).
        path: Where to write the PNG; parent folders are created.

    Returns:
        The path written.
    """
    if len(steps) == 0 or len(steps) != len(lrs):
        raise ValueError(
            "Arguments `steps` and `lrs` must be non-empty and of equal length. "
            f"Received: len(steps)={len(steps)}, len(lrs)={len(lrs)}"
        )
    fig = Figure(figsize=(7.0, 3.5))
    ax = fig.add_subplot()
    ax.plot(list(steps), list(lrs), label="learning rate")
    for index, end in enumerate(cycle_ends):
        ax.axvline(end, color="gray", linestyle="--", linewidth=1, label="cycle end" if index == 0 else None)
    ax.set_xlabel("Step")
    ax.set_ylabel("Learning rate")
    ax.set_title("SGDR learning rate (as used)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
