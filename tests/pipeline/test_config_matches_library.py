"""The config sections and the library agree on every shared default and bound (issue 19: one home per fact).

Each section field that feeds a library argument must have the library's default and accept exactly the values the
library accepts (probed at the section's bounds and around them), unless `tasks.config.PIPELINE_CHOICES` lists it
as a deliberate pipeline choice. A listed field that no longer differs fails too, so the list stays true.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from ensemble.data import DataConfig
from ensemble.evaluation.metrics import METRICS, evaluate_classification
from ensemble.evaluation.selection import check_metric
from ensemble.growth.rounds import GrowthConfig
from ensemble.model.fused import FusedMLP
from ensemble.optim.schedules import SGDRSchedule
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.training.train import TrainConfig
from tasks.config import (
    PIPELINE_CHOICES,
    DataSection,
    EvaluationSection,
    GrowthSection,
    ModelSection,
    Section,
    SnapshotSection,
    SweepSection,
    TrainSection,
)

_PROBS = np.log(np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]]]))  # (N=2, B=2, C=2) log-probs


@dataclass(frozen=True)
class Pairing:
    """Section `fields` (section name -> library argument name) that `library` takes; `build` makes the library
    object from the section's values of those fields (library names), raising on a value it rejects."""

    section: type[Section]
    prefix: str
    library: Callable
    fields: dict[str, str]
    build: Callable[[dict], object]


def _same(names) -> dict[str, str]:
    return {name: name for name in names}


PAIRINGS = [
    Pairing(DataSection, "data", DataConfig, _same(DataSection.model_fields), lambda v: DataConfig(**v)),
    Pairing(
        ModelSection,
        "model",
        FusedMLP,
        _same(ModelSection.model_fields),
        lambda v: FusedMLP(input_dim=3, **v),
    ),
    Pairing(
        TrainSection,
        "train",
        TrainConfig,
        _same(("epochs", "batch_size", "bagging", "seed", "steps_per_call", "jit_compile")),
        lambda v: TrainConfig(**v),
    ),
    Pairing(
        SnapshotSection,
        "snapshots",
        SGDRSchedule,
        _same(("cycle_length_multiplier", "lr_init", "lr_min", "lr_multiplier")),
        lambda v: SGDRSchedule(cycle_length=1, **v),
    ),
    Pairing(
        SnapshotSection,
        "snapshots",
        SGDRSchedule.from_epochs,
        {"cycle_length": "cycle_length"},
        lambda v: SGDRSchedule.from_epochs(v["cycle_length"], steps_per_epoch=1),
    ),
    Pairing(
        SnapshotSection,
        "snapshots",
        SnapshotCollector,
        _same(("skip_first", "keep_best")),
        lambda v: SnapshotCollector(validation_data=(np.zeros((2, 3)), np.zeros(2)), **v),
    ),
    Pairing(
        GrowthSection,
        "growth",
        GrowthConfig,
        _same(set(GrowthSection.model_fields) - {"enabled", "epochs_per_round"}),
        lambda v: GrowthConfig(**v),
    ),
    Pairing(
        EvaluationSection,
        "evaluation",
        evaluate_classification,
        {"combiner": "method", "bins": "bins"},
        lambda v: evaluate_classification(_PROBS, np.array([0, 1]), log_probs=True, **v),
    ),
]
"""Every section field that feeds a library argument. Pipeline-only fields: `enabled`, `cycles`,
`epochs_per_round`, `members_per_shard`, `mixed_precision`, `metric`, the optimizer/runner/registry sections."""


def library_default(library: Callable, name: str):
    """The library's default of argument `name` (`MISSING` when it has none)."""
    if is_dataclass(library):
        field = next(f for f in fields(library) if f.name == name)
        if field.default_factory is not MISSING:
            return field.default_factory()
        return field.default
    default = inspect.signature(library).parameters[name].default
    return MISSING if default is inspect.Parameter.empty else default


def normalised(value):
    return list(value) if isinstance(value, tuple) else value


def probes(section: type[Section], name: str) -> list:
    """Values to try on a field: its default, the values around each of its bounds, the ends of its type."""
    info = section.model_fields[name]
    values = [info.get_default(call_default_factory=True)]
    args = typing.get_args(info.annotation) or (info.annotation,)
    if type(None) in args:
        values.append(None)
    for arg in args:
        if typing.get_origin(arg) is typing.Literal:
            values += [*typing.get_args(arg), "nonsense"]
        elif arg is bool:
            values += [True, False]
        elif arg is int:
            values += [-1, 0, 1, 2]
        elif arg is float:
            values += [-0.5, 0.0, 1e-4, 0.01, 0.5, 1.0, 2.0]
        elif arg is str:
            values += ["nonsense"]
        elif typing.get_origin(arg) is list and typing.get_args(arg) == (int,):
            values += [[], [0], [4], [4, 4]]
    numeric = int if int in args else float if float in args else None
    bounds = [getattr(m, key) for m in info.metadata for key in ("ge", "gt", "le", "lt") if hasattr(m, key)]
    for b in bounds if numeric else []:
        step = 1 if numeric is int else 1e-3 * max(1.0, abs(b))
        values += [numeric(b - step), numeric(b), numeric(b + step)]
    unique = []  # without values above 10,000 (e.g. `model.members`' pipeline-only cap of 100,000: a FusedMLP of
    # 100,000 members takes minutes to construct)
    for value in (v for v in values if not (isinstance(v, int | float) and v > 10_000)):
        if not any(value == u and type(value) is type(u) for u in unique):
            unique.append(value)
    return unique


def accepted(build: Callable[[], object]) -> bool:
    try:
        build()
    except (ValueError, TypeError, ValidationError):
        return False
    return True


def disagreements(pairing: Pairing, name: str) -> list[str]:
    """How section field `name` and its library argument differ (default, then each probe accepted by one only)."""
    section, library_name = pairing.section, pairing.fields[name]
    found = []
    ours, theirs = (
        section.model_fields[name].get_default(call_default_factory=True),
        library_default(pairing.library, library_name),
    )
    if theirs is not MISSING and normalised(ours) != normalised(theirs):
        found.append(f"default {ours!r} vs the library's {theirs!r}")
    base = section()
    shared = {lib: getattr(base, field) for field, lib in pairing.fields.items()}
    for value in probes(section, name):
        by_section = accepted(lambda value=value: section(**{name: value}))
        by_library = accepted(lambda value=value: pairing.build({**shared, library_name: value}))
        if by_section != by_library:
            who = "the section" if by_section else "the library"
            found.append(f"{value!r} accepted by {who} only")
    return found


FIELDS = [(pairing, name) for pairing in PAIRINGS for name in pairing.fields]


@pytest.mark.parametrize(
    ("pairing", "name"), FIELDS, ids=[f"{p.prefix}.{n}->{p.library.__qualname__}" for p, n in FIELDS]
)
def test_section_field_has_the_library_default_and_bounds_unless_listed(pairing, name):
    key = f"{pairing.prefix}.{name}"
    found = disagreements(pairing, name)
    if key in PIPELINE_CHOICES:
        assert found, f"{key} is listed in PIPELINE_CHOICES but now agrees with the library: remove the entry"
    else:
        assert not found, (
            f"{key} drifted from {pairing.library.__qualname__}: {found}; align it or list it in PIPELINE_CHOICES"
        )


def test_every_pipeline_choice_names_a_compared_field():
    compared = {f"{pairing.prefix}.{name}" for pairing, name in FIELDS}
    assert set(PIPELINE_CHOICES) <= compared, set(PIPELINE_CHOICES) - compared


def test_drift_is_detected_on_a_section_with_another_default_and_bound():
    """The comparison itself catches drift: a copy of GrowthSection with noise 1e-3 and patience >= 1."""
    from pydantic import Field

    class DriftedGrowth(GrowthSection):
        noise: float = Field(1e-3, ge=0)
        patience: int = Field(2, ge=1)

    pairing = next(p for p in PAIRINGS if p.section is GrowthSection)
    drifted = Pairing(DriftedGrowth, "growth", pairing.library, pairing.fields, pairing.build)
    assert disagreements(drifted, "noise") == ["default 0.001 vs the library's 0.01"]
    assert disagreements(drifted, "patience") == ["0 accepted by the library only"]


@pytest.mark.parametrize("metric", [None, *METRICS, "nonsense"])
def test_sweep_selection_metric_accepts_exactly_what_the_selection_accepts_for_some_task(metric):
    """`sweep.selection_metric` and `ensemble.evaluation.selection.check_metric` agree: both take their names from the
    registry `ensemble.evaluation.metrics.METRICS` (the task, known after parsing, then picks among them)."""
    by_library = any(
        accepted(lambda task=task: check_metric(metric, task)) for task in ("binary", "regression")
    )
    by_section = accepted(lambda: SweepSection(learning_rate=[0.01], selection_metric=metric))
    assert by_section == by_library, (
        f"selection_metric={metric!r}: section {by_section}, library {by_library}"
    )
