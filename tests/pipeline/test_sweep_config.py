"""The `sweep:` config section: it sets the member count, and bad sweeps are one clear error before anything runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config import load_config
from tasks.live_logging import member_params, sweep_members
from tests.pipeline.helpers import cli_in_a_fresh_process


def test_sweep_sets_the_members_to_configurations_times_repeats():
    config = load_config(
        overrides={
            "sweep.learning_rate": [1e-3, 1e-2],
            "sweep.weight_decay": [0, 1e-4, 1e-3],
            "sweep.repeats": 2,
        }
    )
    assert config.model.members == 12
    assert load_config(overrides={"sweep.learning_rate": [1e-3], "model.members": 1}).model.members == 1


def test_swept_learning_rate_replaces_sgdr_lr_init_or_the_optimizers_rate():
    overrides = {"sweep.learning_rate": [0.05], "snapshots.lr_init": 0.01, "optimizer.learning_rate": 0.001}
    with_sgdr = load_config(overrides=overrides)
    [member] = sweep_members(with_sgdr.sweep, with_sgdr.optimizer, with_sgdr.snapshots, with_sgdr.train)
    assert member["lr_scale"] == pytest.approx(5.0)  # lr_init 0.01 -> 0.05, lr_min x5 with it
    plain = load_config(overrides={**overrides, "snapshots.enabled": False})
    [member] = sweep_members(plain.sweep, plain.optimizer, plain.snapshots, plain.train)
    assert member["lr_scale"] == pytest.approx(50.0)


def test_each_member_run_carries_its_own_hyper_parameters_as_params():
    config = load_config(
        overrides={"sweep.learning_rate": [1e-3, 1e-2], "sweep.bagging": [True, False], "sweep.repeats": 2}
    )
    members = sweep_members(config.sweep, config.optimizer, config.snapshots, config.train)
    params = member_params(config.model, config.train, 0, members)
    assert len(params) == 8
    assert params[5] | {"seed": None} == {
        "member": 5,
        "seed": None,
        "hidden_units": [32, 32],
        "width": 32,
        "bootstrap": True,  # configuration 2 = (1e-2, bagging True): parameters vary in SWEEPABLE order
        "data_seed": 0,
        "configuration": 2,
        "repeat": 1,
        "learning_rate": 1e-2,
        "weight_decay": 0.0,
        "init_scale": 1.0,
    }
    assert {params[n]["learning_rate"] for n in range(8)} == {1e-3, 1e-2}
    shard = config.model.model_copy(update={"members": 4})  # members 4..7 as a shard
    assert [p["configuration"] for p in member_params(shard, config.train, 4, members).values()] == [
        2,
        2,
        3,
        3,
    ]


SWEEP_ERRORS = {  # case -> (overrides, words the one message must hold)
    "empty_grid": ({"sweep.learning_rate": []}, ["sweep.learning_rate is empty", "at least one value"]),
    "no_parameter": ({"sweep.repeats": 2}, ["sweep space is empty"]),
    "negative_learning_rate": ({"sweep.learning_rate": [0.01, -0.1]}, ["sweep.learning_rate", "> 0"]),
    "negative_decay": ({"sweep.weight_decay": [-1e-4]}, ["sweep.weight_decay must be >= 0"]),
    "norm_clipping": ({"sweep.global_clipnorm": [1.0]}, ["global_clipnorm", "couple the members"]),
    "zero_repeats": ({"sweep.learning_rate": [0.01], "sweep.repeats": 0}, ["sweep.repeats"]),
    "members_contradict": (
        {"sweep.learning_rate": [0.01, 0.1], "model.members": 3},
        ["model.members=3", "expands to 2 members"],
    ),
    "growth": ({"sweep.learning_rate": [0.01], "growth.enabled": True}, ["growth.enabled with a sweep"]),
    "one_fold": ({"sweep.learning_rate": [0.01], "sweep.selection_folds": 1}, ["selection_folds", ">= 2"]),
    "negative_margin": (
        {"sweep.learning_rate": [0.01], "sweep.selection_standard_errors": -1},
        ["selection_standard_errors", "greater than or equal to 0"],
    ),
    "nan_margin": (
        {"sweep.learning_rate": [0.01], "sweep.selection_standard_errors": "nan"},
        ["selection_standard_errors", "finite number"],
    ),
    "unselectable_metric": (
        {"sweep.learning_rate": [0.01], "sweep.selection_metric": "ece"},
        ["unknown selection metric 'ece'", "'accuracy', 'nll', 'brier', 'rmse', 'mae', 'r2'", "null"],
    ),
}


@pytest.mark.parametrize("case", list(SWEEP_ERRORS))
def test_bad_sweeps_are_config_errors_naming_the_problem(case):
    overrides, words = SWEEP_ERRORS[case]
    with pytest.raises(ValidationError) as raised:
        load_config(overrides=overrides)
    [error] = raised.value.errors()
    for word in words:
        assert word in error["msg"] or word in ".".join(map(str, error["loc"]))


@pytest.mark.parametrize(
    "setting", ["sweep.learning_rate=[]", "sweep.clipnorm=[1.0]", "sweep.weight_decay=[-1]"]
)
def test_cli_rejects_a_bad_sweep_in_one_line_before_loading_tensorflow_prefect_or_mlflow(setting, tmp_path):
    completed = cli_in_a_fresh_process(["train", "--data", "digits", "--set", setting], tmp_path)
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.splitlines()
    assert line.startswith("error: invalid config: sweep") and setting.split("=")[0] in line
    assert completed.stdout.split() == []
    assert list(tmp_path.iterdir()) == []
