"""The pipeline config: YAML + overrides in a fixed precedence, and typos or contradictions rejected at parse time."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from ensemble.evaluation.metrics import COMBINERS, EPOCH_SCORES, METRICS
from flows.cli import build_parser, load_pipeline_config
from tasks.config import PipelineConfig, load_config, parse_assignment


def write_yaml(path, sections: dict):
    path.write_text(yaml.safe_dump(sections))
    return path


def test_yaml_file_sets_values_and_leaves_the_rest_at_defaults(tmp_path):
    path = write_yaml(
        tmp_path / "pipeline.yaml",
        {"data": {"source": "wine", "val_fraction": 0.2}, "model": {"members": 5, "hidden_units": [16, 4]}},
    )
    config = load_config(path)
    assert config.data.source == "wine"
    assert config.data.val_fraction == 0.2
    assert config.model.members == 5
    assert config.model.hidden_units == [16, 4]
    defaults = PipelineConfig()
    assert config.train == defaults.train
    assert config.snapshots == defaults.snapshots
    assert config.data.test_fraction == defaults.data.test_fraction


def test_overrides_beat_the_file_and_the_file_beats_defaults(tmp_path):
    path = write_yaml(tmp_path / "pipeline.yaml", {"model": {"members": 5}, "train": {"epochs": 7}})
    config = load_config(path, {"model.members": 9})
    assert config.model.members == 9  # override > file
    assert config.train.epochs == 7  # file > default (10)


def test_cli_named_options_beat_set_which_beats_the_file(tmp_path):
    path = write_yaml(
        tmp_path / "pipeline.yaml",
        {"model": {"members": 5, "activation": "tanh"}, "train": {"epochs": 7, "batch_size": 3}},
    )
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(path),
            "--set",
            "model.members=6",
            "--set",
            "train.epochs=8",
            "--set",
            "model.hidden_units=[4, 4]",
            "--members",
            "11",
        ]
    )
    config = load_pipeline_config(args)
    assert config.model.members == 11  # named option > --set > file
    assert config.train.epochs == 8  # --set > file
    assert config.model.hidden_units == [4, 4]  # --set > default
    assert config.model.activation == "tanh"  # file > default
    assert config.train.batch_size == 3


def test_set_values_are_parsed_as_yaml():
    assert parse_assignment("model.hidden_units=[64,64]") == ("model.hidden_units", [64, 64])
    assert parse_assignment("snapshots.keep_best=null") == ("snapshots.keep_best", None)
    assert parse_assignment("snapshots.lr_init=0.05") == ("snapshots.lr_init", 0.05)
    assert parse_assignment("data.source=a=b.csv") == ("data.source", "a=b.csv")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignment("model.members")


def test_unknown_override_key_is_named_in_the_error():
    with pytest.raises(ValidationError, match="memebrs") as info:
        load_config(overrides={"model.memebrs": 3})
    assert info.value.errors()[0]["loc"] == ("model", "memebrs")
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_unknown_key_in_yaml_section_and_unknown_section_are_named(tmp_path):
    with pytest.raises(ValidationError) as info:
        load_config(write_yaml(tmp_path / "a.yaml", {"train": {"epoch": 3}}))
    assert [e["loc"] for e in info.value.errors()] == [("train", "epoch")]
    with pytest.raises(ValidationError) as info:
        load_config(write_yaml(tmp_path / "b.yaml", {"trian": {"epochs": 3}}))
    assert [e["loc"] for e in info.value.errors()] == [("trian",)]


def test_missing_config_file_and_non_mapping_file_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listing)


def test_override_below_a_scalar_is_rejected_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        load_config(overrides={"output_dir.sub": 1})
    path = write_yaml(tmp_path / "pipeline.yaml", {"output_dir": "out"})
    with pytest.raises(ValueError, match="'output_dir.sub'.*not a section"):
        load_config(path, {"output_dir.sub": 1})


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.9, 0.1)])
def test_split_fractions_that_leave_no_training_rows_are_rejected(val, test):
    with pytest.raises(ValidationError, match="val_fraction \\+ test_fraction must be < 1"):
        load_config(overrides={"data.val_fraction": val, "data.test_fraction": test})


def test_split_fractions_just_below_one_are_accepted():
    config = load_config(overrides={"data.val_fraction": 0.5, "data.test_fraction": 0.49})
    assert config.data.val_fraction + config.data.test_fraction < 1


@pytest.mark.parametrize(("lr_min", "lr_init"), [(0.01, 0.01), (0.1, 0.01)])
def test_lr_min_not_below_lr_init_is_rejected(lr_min, lr_init):
    with pytest.raises(ValidationError, match="lr_min must be < lr_init"):
        load_config(overrides={"snapshots.lr_min": lr_min, "snapshots.lr_init": lr_init})


def test_regression_with_a_classification_metric_is_rejected():
    with pytest.raises(ValidationError, match="classification metric"):
        load_config(overrides={"data.task": "regression", "evaluation.metric": "accuracy"})
    config = load_config(overrides={"data.task": "regression", "evaluation.metric": "rmse"})
    assert config.evaluation.metric == "rmse"


def test_classification_with_a_regression_metric_is_rejected():
    with pytest.raises(ValidationError, match="regression metric"):
        load_config(overrides={"data.task": "multiclass", "evaluation.metric": "mae"})


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model.members", 0, "members"),
        ("train.epochs", -1, "epochs"),
        ("model.hidden_units", [8, 0], "hidden width"),
        ("model.activation", "relux", "relux"),
        ("optimizer.name", "adamw", "name"),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(key, value, named):
    with pytest.raises(ValidationError, match=named):
        load_config(overrides={key: value})


@pytest.mark.parametrize(
    ("epochs", "cycles", "multiplier", "first"),
    [
        (10, 2, 1.0, 5),  # the defaults: 2 cycles of 5 epochs
        (7, 2, 1.0, 7),  # 2 does not divide 7: 1 cycle of 7
        (9, 3, 1.0, 3),
        (12, 5, 1.0, 3),  # 4 is the largest count <= 5 that divides 12
        (1, 2, 1.0, 1),
        (10, 2, 1.5, 4),  # 4 + 6
        (19, 3, 1.5, 4),  # 4 + 6 + 9
        (10, 2, 2.0, 10),  # 10 / 3 is not whole: 1 cycle
    ],
)
def test_sgdr_cycle_length_is_derived_from_the_epochs_so_every_epoch_count_fits(
    epochs, cycles, multiplier, first
):
    config = load_config(
        overrides={
            "train.epochs": epochs,
            "snapshots.cycles": cycles,
            "snapshots.cycle_length_multiplier": multiplier,
        }
    )
    assert config.snapshots.cycle_length_for(epochs) == first
    lengths, count = [first * multiplier**k for k in range(cycles)], 0
    while (
        sum(lengths[:count]) < epochs
    ):  # the reference: whole cycles add up to exactly the epochs, none left
        count += 1
    assert sum(lengths[:count]) == epochs and 1 <= count <= cycles


def test_explicit_cycle_length_wins_over_cycles_and_must_fit_the_epochs():
    config = load_config(overrides={"train.epochs": 6, "snapshots.cycle_length": 3, "snapshots.cycles": 6})
    assert config.snapshots.cycle_length_for(6) == 3
    load_config(
        overrides={"train.epochs": 6, "snapshots.cycle_length": 2, "snapshots.cycle_length_multiplier": 2}
    )
    with pytest.raises(
        ValidationError, match=r"cycle_length=2 \(x2 per cycle\) does not fit train\.epochs=5.*2 or 6"
    ):
        load_config(
            overrides={"train.epochs": 5, "snapshots.cycle_length": 2, "snapshots.cycle_length_multiplier": 2}
        )
    load_config(overrides={"train.epochs": 5, "snapshots.cycle_length": 2, "snapshots.enabled": False})


def test_config_round_trips_through_model_dump():
    """A deployment stores `config.model_dump()` as its parameters; it must validate back to the same config."""
    config = load_config(overrides={"model.members": 4, "snapshots.keep_best": 2, "data.source": "wine"})
    assert PipelineConfig.model_validate(config.model_dump()) == config


@pytest.mark.parametrize("combiner", COMBINERS)
def test_evaluation_combiner_accepts_every_registered_combiner(combiner):
    assert load_config(overrides={"evaluation.combiner": combiner}).evaluation.combiner == combiner


def test_evaluation_combiner_outside_the_registry_is_rejected_with_its_names():
    with pytest.raises(
        ValidationError, match=r"must be one of \('mean', 'geometric'\). Received: combiner='median'"
    ):
        load_config(overrides={"evaluation.combiner": "median"})


@pytest.mark.parametrize("metric", METRICS)
def test_champion_gate_direction_and_task_follow_the_metric_registry(metric):
    info = METRICS[metric]
    task, other = ("regression", "multiclass") if info.kind == "regression" else ("multiclass", "regression")
    evaluation = load_config(overrides={"evaluation.metric": metric}).evaluation
    assert evaluation.higher_is_better(task) is info.higher_is_better
    with pytest.raises(ValueError, match=f"is a {info.kind} metric but the data is a {other} task"):
        evaluation.for_task(other)


@pytest.mark.parametrize("monitor", EPOCH_SCORES)
def test_growth_monitor_accepts_every_registered_epoch_score(monitor):
    assert load_config(overrides={"growth.monitor": monitor}).growth.monitor == monitor


def test_growth_monitor_outside_the_registry_is_rejected_with_its_names():
    with pytest.raises(
        ValidationError, match=r"must be one of \('val_accuracy', 'val_ensemble_accuracy', 'val_loss'\)"
    ):
        load_config(overrides={"growth.monitor": "val_nll"})


@pytest.mark.parametrize("combiner", COMBINERS)
def test_growth_on_the_ensemble_accuracy_accepts_every_combiner(combiner):
    """The training loop's `val_ensemble_accuracy` combines the members by `evaluation.combiner` (the tasks pass
    it on as `TrainConfig.combiner`; `tests/ensemble/test_train.py` proves the score), so growth decides on the
    ensemble that is evaluated and served, whatever the combiner."""
    growth = {"growth.enabled": True, "growth.monitor": "val_ensemble_accuracy"}
    config = load_config(overrides={**growth, "evaluation.combiner": combiner})
    assert (config.growth.monitor, config.evaluation.combiner) == ("val_ensemble_accuracy", combiner)
