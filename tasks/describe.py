"""What a person reads about a run: run names from what a run is, and the Markdown descriptions of parent runs,
model versions and comparisons (MLflow's run/version descriptions, Prefect's summary artifacts)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ensemble.evaluation.metrics import METRICS
from tasks.config import PipelineConfig

KEY_METRICS = (
    *METRICS,
    "oracle_accuracy",
    "num_members",
)  # the registry's metrics, then two about the members


def data_name(source: str) -> str:
    """`digits` for a bundled set, the file's stem for a file (`/data/wine.csv` -> `wine`)."""
    return Path(source).stem or source


def run_title(config: PipelineConfig) -> str:
    """A train run's name from what it is: `digits 8x[32,32] sgdr-2`, `wine 16x[64] const-lr +growth`."""
    model = config.model
    schedule = f"sgdr-{sgdr_cycles(config)}" if config.snapshots.enabled else "const-lr"
    units = json.dumps(list(model.hidden_units), separators=(",", ":"))
    title = f"{data_name(config.data.source)} {model.members}x{units} {schedule}"
    return title + (" +growth" if config.growth.enabled else "")


def sgdr_cycles(config: PipelineConfig) -> int:
    """How many SGDR cycles training runs (`SnapshotSection.cycle_length_for` of its epochs)."""
    snapshots, epochs = config.snapshots, config.train.epochs
    length, done, cycles = float(snapshots.cycle_length_for(epochs)), 0.0, 0
    while done + 1e-9 < epochs and cycles < epochs:
        done, length, cycles = done + length, length * snapshots.cycle_length_multiplier, cycles + 1
    return cycles


def compare_title(config: PipelineConfig) -> str:
    """A compare run's name: `compare digits 8x[32,32]`."""
    units = json.dumps(list(config.model.hidden_units), separators=(",", ":"))
    return f"compare {data_name(config.data.source)} {config.model.members}x{units}"


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def decision(
    registration: Mapping[str, Any] | None, metric: str, value: float, higher_is_better: bool
) -> str:
    """Why a registered version got its alias (or none), with both values: one Markdown sentence."""
    if registration is None:
        return "Not registered (`registry.enabled` is false)."
    name, version, alias = registration["name"], registration["version"], registration["alias"]
    old, old_version = registration.get("champion_value"), registration.get("champion_version")
    direction = "higher" if higher_is_better else "lower"
    head = f"Registered as `{name}` version {version}"
    if alias is None:
        return f"{head} without an alias: {registration.get('reason')}."
    if old_version is None:
        return f"{head}, **@{alias}**: the first champion of `{name}` (test {metric} {value:.4f})."
    if old is None:
        return f"{head}, **@{alias}**: test {metric} {value:.4f}; the previous champion (version {old_version}) had none."
    verb = "beats" if alias == "champion" or _better(value, old, higher_is_better) else "does not beat"
    return (
        f"{head}, **@{alias}**: its test {metric} {value:.4f} {verb} {old:.4f} of the champion before it "
        f"(version {old_version}; {direction} is better)."
    )


def _better(value: float, old: float, higher_is_better: bool) -> bool:
    return value > old if higher_is_better else value < old


def parent_description(
    title: str,
    metrics: Mapping[str, float],
    metric: str,
    best_member: Mapping[str, Any] | None,
    registration_line: str,
    extra: list[str] = (),
) -> str:
    """A train run's description: key test metrics, the ensemble against its best member, the registry decision."""
    lines = [f"### {title}", "", "| test metric | ensemble |", "|---|---|"]
    lines += [f"| {key} | {_value(metrics[key])} |" for key in KEY_METRICS if key in metrics]
    if best_member is not None and best_member.get(metric) is not None:
        ours, theirs = metrics[metric], best_member[metric]
        lines += [
            "",
            f"Ensemble vs best member (member {best_member['member']}): test {metric} {ours:.4f} vs "
            f"{theirs:.4f} ({ours - theirs:+.4f}).",
        ]
    lines += ["", registration_line, *extra]
    return "\n".join(lines)


def compare_verdict(
    rows: list[Mapping[str, Any]], metric: str = "accuracy", higher_is_better: bool = True
) -> str:
    """One line: does the ensemble beat the single model and the single model of equal FLOPs on `metric`?"""
    by_kind = {row["kind"]: row for row in rows}
    ensemble = by_kind.get("ensemble", {}).get(metric)
    if ensemble is None:
        return f"No ensemble {metric} to compare."
    parts = []
    for kind, label in (
        ("single", "the single member-sized model"),
        ("equal_flops_single", "the equal-FLOPs single model"),
    ):
        other = by_kind.get(kind, {}).get(metric)
        if other is not None:
            word = "beats" if _better(ensemble, other, higher_is_better) else "does not beat"
            parts.append(f"{word} {label} ({ensemble:.4f} vs {other:.4f})")
    return (
        f"The ensemble {' and '.join(parts)} on test {metric}."
        if parts
        else f"Ensemble test {metric} {ensemble:.4f}."
    )


def table_markdown(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
    """A Markdown table of `rows` (missing cells empty, floats with 4 decimals)."""
    head = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(
        head + ["| " + " | ".join(_value(row.get(c, "")) for c in columns) + " |" for row in rows]
    )
