"""The pipeline's one validated configuration: pydantic models (typos fail at parse time), loaded from YAML,
overridable by `section.key=value` strings (the CLI's `--set`) and by named CLI options.

Field names equal the library's argument names, so each section converts to its library config one to one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ensemble.data import DataConfig
from ensemble.evaluation.metrics import (
    DEFAULT_METRICS,
    METRICS,
    check_combiner,
    metrics_for,
    monitor_mode,
    task_kind,
)
from ensemble.evaluation.selection import (
    DEFAULT_SELECTION_METRICS,
    PREFER_UNIFORM_STANDARD_ERRORS,
    SELECTION_METRICS,
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PIPELINE_CHOICES: dict[str, str] = {
    "snapshots.cycle_length": "whole epochs, null = fit `cycles` into the epochs (SGDRSchedule.from_epochs takes "
    "any epochs > 0 and no default), so every cycle and its snapshot end at an epoch end",
    "snapshots.lr_min": "1e-4, not SGDRSchedule's 0.0: the floor the pipeline's default runs have always used; and "
    "< lr_init strictly (SGDRSchedule allows lr_min = lr_init: a constant rate, which anneals nothing to snapshot)",
    "snapshots.lr_init": "> lr_min strictly, the other side of `snapshots.lr_min`'s rule",
    "growth.min_delta": "0.005, not GrowthConfig's 0.0 (Keras' EarlyStopping): validation accuracy of a few hundred "
    "rows moves in steps of ~0.4 %, and `stop_without_gain` ends growth on a gain below it",
    "growth.max_rounds": ">= 1 (GrowthConfig: >= 0): `growth.enabled` with no split is a config mistake",
    "growth.units_per_split": "4, not GrowthConfig's None, so `strategy: targeted` works as it is; with "
    "`splitting` it caps the units split per layer and round (null: up to the width)",
    "growth.stop_without_gain": "true, not GrowthConfig's false: the pipeline stops growing once a round gains "
    "nothing on validation (issue 17)",
}
"""Every default or bound of a section that deliberately differs from the library argument it feeds, and why.

Every other field that a section shares with a library config (`ensemble.data.DataConfig`, `FusedMLP`,
`TrainConfig`, `SGDRSchedule`, `SnapshotCollector`, `GrowthConfig`, `ensemble.evaluation.metrics`) has the library's default
and accepts exactly the values the library accepts: `tests/pipeline/test_config_matches_library.py` compares them
and fails on any difference not listed here (and on an entry here that no longer differs)."""


class DataSection(Section):
    """Where the data comes from and how it is split (see `ensemble.data.DataConfig`)."""

    source: str = "digits"
    target: str | None = None
    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    seed: int = 0
    standardize: bool = True
    max_classes: int = Field(50, ge=2)
    train_rows: int | None = Field(None, ge=1)
    features: list[str] | None = None
    drop: list[str] = Field(default_factory=list)
    id_column: str | None = None

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataSection:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training rows. "
                f"Received: {self.val_fraction} + {self.test_fraction}"
            )
        return self

    @model_validator(mode="after")
    def _one_role_per_column(self) -> DataSection:
        DataConfig(
            **self.model_dump()
        )  # the library's checks of `features`, `drop`, `id_column`, at parse time
        return self


class ModelSection(Section):
    """The member architecture (see `ensemble.model.fused.FusedMLP`)."""

    members: int = Field(8, ge=1, le=100_000)  # the cap is the pipeline's own (FusedMLP takes any N >= 1)
    hidden_units: list[int] = Field(default_factory=lambda: [32, 32])
    activation: str = "relu"
    seed: int = Field(0, ge=0)

    @field_validator("hidden_units")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(u < 1 for u in value):
            raise ValueError(f"every hidden width must be >= 1. Received: {value}")
        return value

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        known = {
            "relu",
            "tanh",
            "sigmoid",
            "gelu",
            "elu",
            "selu",
            "softplus",
            "swish",
            "silu",
            "linear",
            "leaky_relu",
        }
        if value not in known:
            raise ValueError(f"unknown activation {value!r}; use one of {sorted(known)}")
        return value


class OptimizerSection(Section):
    """An elementwise Keras optimiser (global-norm clipping would couple members and is not offered)."""

    name: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class TrainSection(Section):
    """The fused training loop (see `ensemble.training.train.TrainConfig`)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(1, ge=1)
    bagging: bool = False
    seed: int = 0
    steps_per_call: int = Field(1000, ge=1)
    jit_compile: bool | Literal["auto"] = (
        "auto"  # XLA where it compiles (see `ensemble.training.train.XlaFunction`)
    )
    # Pipeline-only (not `TrainConfig` arguments): members per shard, each shard trained by its own task on the
    # `runner` (None: one task trains all members); the Keras dtype policy the members are built with.
    members_per_shard: int | None = Field(None, ge=1)
    mixed_precision: Literal["mixed_float16", "mixed_bfloat16"] | None = None


class RunnerSection(Section):
    """Where shard tasks run: Prefect's thread pool, a Dask cluster (prefect-dask) or a Ray cluster (prefect-ray).

    `address` connects to a running cluster (`tcp://host:8786` for Dask, `ray://host:10001` for Ray); without it,
    `dask` starts a local cluster of `workers` workers (`processes=False`: threads of this process) and `ray` a
    local Ray instance. `workers` also caps the thread pool (None: the runner's default).
    """

    kind: Literal["thread", "dask", "ray"] = "thread"
    address: str | None = None
    workers: int | None = Field(None, ge=1)
    processes: bool = True

    @model_validator(mode="after")
    def _address_needs_cluster(self) -> RunnerSection:
        if self.address is not None and self.kind == "thread":
            raise ValueError(
                f"runner.address is only used with kind 'dask' or 'ray'. Received: kind='thread', "
                f"address={self.address!r}"
            )
        return self


class SnapshotSection(Section):
    """SGDR + one snapshot per cycle (seed 002 parameter names); `cycle_length` is in epochs.

    `cycle_length: null` (the default) fits `cycles` whole cycles into the run's epochs (`cycle_length_for`), so any
    `train.epochs` works; an explicit `cycle_length` wins over `cycles` and must end a cycle at the last epoch.
    """

    enabled: bool = True
    cycles: int = Field(2, ge=1)
    cycle_length: int | None = Field(None, ge=1)
    cycle_length_multiplier: float = Field(1.0, ge=1)
    lr_init: float = Field(0.01, gt=0)
    lr_min: float = Field(1e-4, ge=0)  # a pipeline choice (`PIPELINE_CHOICES`)
    lr_multiplier: float = Field(1.0, gt=0)
    skip_first: int = Field(0, ge=0)
    keep_best: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _min_below_init(self) -> SnapshotSection:
        if self.lr_min >= self.lr_init:  # a pipeline choice (`PIPELINE_CHOICES`)
            raise ValueError(
                f"lr_min must be < lr_init. Received: lr_min={self.lr_min}, lr_init={self.lr_init}"
            )
        return self

    def _cycle_epochs(self, first: float, count: int) -> list[float]:
        """Lengths in epochs of the first `count` cycles when the first lasts `first` epochs."""
        return [first * self.cycle_length_multiplier**k for k in range(count)]

    def cycle_length_for(self, epochs: int) -> int:
        """The first cycle's length in epochs for a run of `epochs` epochs (the one home of this rule).

        `cycle_length` when set; else the largest number of cycles n <= `cycles` that fill `epochs` exactly with a
        whole-epoch first cycle: `epochs / (1 + m + ... + m**(n-1))` for `cycle_length_multiplier` m; with m = 1,
        `epochs / n` for the largest n <= `cycles` that divides `epochs` (epochs 10, cycles 2: 2 cycles of 5;
        epochs 9, cycles 2: 1 cycle of 9; epochs 9, cycles 3: 3 of 3). One cycle of `epochs` always fits.
        """
        if self.cycle_length is not None:
            return self.cycle_length
        for count in range(min(self.cycles, epochs), 1, -1):
            first = epochs / sum(self._cycle_epochs(1.0, count))
            if abs(first - round(first)) < 1e-9:
                return round(first)
        return epochs

    def check_fits(self, epochs: int) -> None:
        """Reject an explicit `cycle_length` whose cycles do not end at epoch `epochs` (the last cycle would yield
        no snapshot); the message names both fields and the run lengths that fit."""
        if self.cycle_length is None:
            return
        ends: list[float] = [0.0]
        while ends[-1] < epochs - 1e-9:
            ends.append(ends[-1] + self._cycle_epochs(self.cycle_length, len(ends))[-1])
        if abs(ends[-1] - epochs) < 1e-9:
            return
        fits = " or ".join(f"{end:g}" for end in ends[-2:] if end > 0)
        raise ValueError(
            f"snapshots.cycle_length={self.cycle_length} (x{self.cycle_length_multiplier:g} per cycle) does not fit "
            f"train.epochs={epochs}: the run would end inside SGDR cycle {len(ends) - 2} (0-based), which would "
            f"yield no snapshot. Set train.epochs to {fits}, or remove snapshots.cycle_length to fit "
            f"snapshots.cycles={self.cycles} cycles into the epochs"
        )


class GrowthSection(Section):
    """Plateau-triggered, function-preserving neuron splitting (see `ensemble.growth.split`, `ensemble.growth.rounds`).

    With snapshots on (SGDR), rounds end at cycle ends: `patience` counts cycles and `epochs_per_round` is extended
    to the next cycle end; without them `anneal_epochs` ends every round with a cosine anneal. Growth stops at
    `max_rounds`, `max_width`, after a round without validation gain (`stop_without_gain`) or, with `strategy:
    splitting`, when no unit has a negative splitting index. The grown model replaces the trained one only when it
    is not worse on validation by `monitor` (`tasks.growth`).
    """

    enabled: bool = False
    epochs_per_round: int = Field(20, ge=1)  # cap; a plateau usually ends a round sooner
    monitor: str = "val_accuracy"  # a name in `ensemble.evaluation.metrics.EPOCH_SCORES`
    min_delta: float = Field(0.005, ge=0)  # a pipeline choice (`PIPELINE_CHOICES`), as the next three marked
    patience: int = Field(2, ge=0)  # epochs, or cycles with SGDR (0 acts as 1, as in Keras' EarlyStopping)
    max_width: int = Field(256, ge=1)
    max_rounds: int = Field(3, ge=1)  # pipeline choice
    strategy: Literal["all", "targeted", "splitting"] = "all"
    units_per_split: int | None = Field(4, ge=1)  # pipeline choice; null with splitting: up to the width
    noise: float = Field(0.01, ge=0)
    lr_width_scaling: bool = True  # learning rate x (hidden units before / after) at each split
    delta: float = Field(0.1, ge=0)  # splitting: copies at theta +/- delta |theta| v
    anneal_epochs: int = Field(0, ge=0)  # without snapshots: epochs annealing the rate before each split
    stop_without_gain: bool = True  # pipeline choice: stop after a round that gained nothing on validation

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, value: str) -> str:
        monitor_mode(value)  # raises, naming the registered scores
        return value

    @model_validator(mode="after")
    def _units_for_targeted(self) -> GrowthSection:
        if self.strategy == "targeted" and self.units_per_split is None:
            raise ValueError(
                "growth.units_per_split must be an int >= 1 with strategy: targeted (null: splitting only)"
            )
        return self


class SweepSection(Section):
    """Per-member hyper-parameters in one fused run (see `ensemble.training.sweep`): a grid (every combination of the lists)
    or `kind: random` (`samples` draws; a parameter is a list of choices or `{low, high, log}`), each configuration
    trained by `repeats` members. The run then has configurations x `repeats` members (`model.members` follows;
    setting it to another number is an error). `learning_rate` replaces SGDR's `lr_init` (`lr_min` scales with it)
    or, without snapshots, `optimizer.learning_rate`. `selection_metric`: the validation metric of the greedy
    ensemble selection, `selection_bags` its bags, `selection_folds` the validation folds that choose between it,
    the uniform ensemble and the best configuration (0: register the selection unchosen; `ensemble.evaluation.selection`),
    `selection_standard_errors` the margin by which another must beat the uniform ensemble to be chosen."""

    kind: Literal["grid", "random"] = "grid"
    learning_rate: list[float] | dict[str, float | bool] | None = None
    weight_decay: list[float] | dict[str, float | bool] | None = None
    init_scale: list[float] | dict[str, float | bool] | None = None
    bagging: list[bool] | None = None
    repeats: int = Field(1, ge=1)
    samples: int = Field(8, ge=1)
    seed: int = 0
    # A name in `ensemble.evaluation.selection.SELECTION_METRICS` (the registry's metrics a selection can optimise) of the
    # data's kind of task; None follows the task (`DEFAULT_SELECTION_METRICS`: nll for classes, rmse for regression).
    selection_metric: str | None = None
    selection_bags: int = Field(
        20, ge=0
    )  # bagged selection over random halves of the models; 0: plain greedy
    selection_folds: int = Field(
        5, ge=0
    )  # cross-validated choice: selection, uniform or best configuration; 0: the selection
    # The choice keeps the uniform ensemble unless the selection or the best configuration beats it in
    # cross-validation by more than this many standard errors of their per-row difference (0: the best score wins).
    selection_standard_errors: float = Field(PREFER_UNIFORM_STANDARD_ERRORS, ge=0, allow_inf_nan=False)

    @field_validator("selection_metric")
    @classmethod
    def _selectable_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in SELECTION_METRICS:
            raise ValueError(
                f"unknown selection metric {value!r}; use one of {list(SELECTION_METRICS)}, or null to follow the "
                f"task ({DEFAULT_SELECTION_METRICS})"
            )
        return value

    @field_validator("selection_folds")
    @classmethod
    def _folds_split(cls, value: int) -> int:
        if value == 1:
            raise ValueError(
                "Argument `selection_folds` must be 0 (no cross-validated choice) or >= 2 folds of the "
                "validation rows. Received: selection_folds=1"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_coupling_options(cls, data: Any) -> Any:
        from ensemble.training.sweep import COUPLING, check_values

        for name in COUPLING:
            if isinstance(data, dict) and name in data:
                check_values(name, [data[name]])  # raises the "couples members" message
        return data

    @model_validator(mode="after")
    def _valid_space(self) -> SweepSection:
        self.library_config()  # `ensemble.training.sweep.SweepConfig`'s checks: empty lists, negative values...
        return self

    def library_config(self):
        """The `ensemble.training.sweep.SweepConfig` of this section."""
        from ensemble.training.sweep import SWEEPABLE, SweepConfig

        space = {name: getattr(self, name) for name in SWEEPABLE if getattr(self, name) is not None}
        return SweepConfig(space, self.kind, self.samples, self.repeats, self.seed)


class EvaluationSection(Section):
    """How the ensemble is scored: combiners and metrics come from the registries `ensemble.evaluation.metrics.LOG_COMBINERS`
    and `ensemble.evaluation.metrics.METRICS` (names, kind of task, direction)."""

    combiner: str = "mean"  # a name in `ensemble.evaluation.metrics.COMBINERS`; for class probabilities (regression: mean)
    bins: int = Field(15, ge=1)
    # The test metric that decides whether a new model version becomes champion; None follows the task
    # (`DEFAULT_METRICS`: accuracy for classes, rmse for regression), resolved by `for_task` once it is known.
    metric: str | None = None

    @field_validator("combiner")
    @classmethod
    def _known_combiner(cls, value: str) -> str:
        check_combiner(value, "combiner")
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        known = list(METRICS)
        if value is not None and value not in known:
            raise ValueError(f"unknown metric {value!r}; use one of {known}, or null to follow the task")
        return value

    def check_task(self, task: str) -> None:
        """Reject a metric the task does not produce (`task="auto"`: not known before the data is loaded)."""
        if self.metric is None or task == "auto":
            return
        kind = task_kind(task)
        if METRICS[self.metric].kind != kind:
            other = METRICS[self.metric].kind
            *rest, last = metrics_for(kind)
            raise ValueError(
                f"evaluation.metric={self.metric!r} is a {other} metric but the data is a {task} task; use "
                f"{', '.join(rest)} or {last} (or leave it unset: {DEFAULT_METRICS[kind]})"
            )

    def for_task(self, task: str) -> EvaluationSection:
        """This section with `metric` set for `task` ("binary", "multiclass" or "regression"): the configured
        metric if it fits the task, else the task's default from `DEFAULT_METRICS`."""
        self.check_task(task)
        return self.model_copy(update={"metric": self.metric or DEFAULT_METRICS[task_kind(task)]})

    def higher_is_better(self, task: str) -> bool:
        """Whether a higher `metric` (resolved for `task`) is better."""
        return METRICS[self.for_task(task).metric].higher_is_better


class RegistrySection(Section):
    """Where the trained ensemble is registered (see `tasks.registry.registered_model_name`)."""

    enabled: bool = True
    # None: `registered_model_name` of mlflow.yaml / $ENSEMBLE_REGISTERED_MODEL if set, else `<data set>-ensemble`.
    model_name: str | None = None

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in "/:@")):
            raise ValueError(
                f"a registered model name must be non-empty without '/', ':' or '@'. Received: {value!r}"
            )
        return value


class PipelineConfig(Section):
    """Everything one `train` flow run needs. `output_dir` holds prepared data, checkpoints and artifacts."""

    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    optimizer: OptimizerSection = OptimizerSection()
    train: TrainSection = TrainSection()
    snapshots: SnapshotSection = SnapshotSection()
    growth: GrowthSection = GrowthSection()
    evaluation: EvaluationSection = EvaluationSection()
    registry: RegistrySection = RegistrySection()
    runner: RunnerSection = RunnerSection()
    sweep: SweepSection | None = None
    output_dir: str = "outputs"
    run_name: str | None = None

    @model_validator(mode="after")
    def _cycles_fit_epochs(self) -> PipelineConfig:
        if self.snapshots.enabled:
            self.snapshots.check_fits(self.train.epochs)
        return self

    @model_validator(mode="after")
    def _anneal_without_sgdr(self) -> PipelineConfig:
        if self.growth.enabled and self.growth.anneal_epochs and self.snapshots.enabled:
            raise ValueError(
                "growth.anneal_epochs needs snapshots.enabled=false: with SGDR, growth rounds end at cycle ends, where "
                "the learning rate is lowest already. Set growth.anneal_epochs=0"
            )
        return self

    @model_validator(mode="after")
    def _members_follow_the_sweep(self) -> PipelineConfig:
        if self.sweep is None:
            return self
        if self.growth.enabled:
            raise ValueError(
                "growth.enabled with a sweep is not supported: growth rounds would train every member with the shared "
                "settings. Set growth.enabled=false or remove the sweep section"
            )
        members = self.sweep.library_config().members
        if "members" in self.model.model_fields_set and self.model.members != members:
            raise ValueError(
                f"model.members={self.model.members} but the sweep expands to {members} members (configurations x "
                f"sweep.repeats={self.sweep.repeats}); remove model.members or set it to {members}"
            )
        object.__setattr__(
            self, "model", self.model.model_copy(update={"members": members})
        )  # frozen section
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> PipelineConfig:
        self.evaluation.check_task(self.data.task)  # "auto" is checked once the data is loaded
        return self


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults <- YAML file <- overrides (dotted keys, e.g. `{"model.members": 16}`); validated once at the end.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        pydantic.ValidationError: a value is invalid or a key is unknown (the message names it).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"Config file {path} must hold a mapping of sections, not {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"Cannot set {dotted!r}: {key!r} is not a section")
        node[leaf] = value
    return PipelineConfig.model_validate(raw)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`"model.members=16"` -> `("model.members", 16)`; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"Expected KEY=VALUE (e.g. model.members=16). Received: {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
