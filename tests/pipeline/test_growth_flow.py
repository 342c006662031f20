"""The train flow's growth step with snapshots (SGDR): rounds at cycle ends, the learning rate logged through
growth, final widths on the member runs, and only a grown model that is not worse on validation registered."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import COMBINERS, evaluate_classification
from ensemble.growth.rounds import GrowthConfig, grow_rounds, round_stop_epoch
from ensemble.model.fused import FusedMLP
from ensemble.model.member_model import load_member_model
from ensemble.predictor import EnsemblePredictor
from ensemble.training.train import TrainConfig, schedule_cycle_ends
from flows.train import train_flow
from tasks.config import OptimizerSection, SnapshotSection
from tasks.factories import build_optimizer
from tasks.growth import RoundProgress, describe_round
from tests.pipeline.helpers import MEMBERS, tiny_config

CYCLE_EPOCHS = 2  # training = one SGDR cycle of 2 epochs; each growth round asks for 1 epoch


def growth_config(tmp_path, **overrides):
    return tiny_config(
        tmp_path,
        **{
            "train.epochs": CYCLE_EPOCHS,
            "snapshots.cycle_length": CYCLE_EPOCHS,
            "growth.enabled": True,
            "growth.epochs_per_round": 1,
            "growth.max_rounds": 1,
            "growth.patience": 1,
            **overrides,
        },
    )


@pytest.mark.parametrize(("epochs", "cycle_epochs"), [(10, 5), (7, 7), (9, 9)])
def test_training_and_growth_rounds_end_at_the_cycle_ends_derived_from_the_epochs(epochs, cycle_epochs):
    """`snapshots.cycles: 2` without `cycle_length`: the optimiser that training builds (and growth continues)
    ends its cycles where `SnapshotSection.cycle_length_for` says, so a growth round stops at one of them."""
    steps = 3  # per epoch
    optimizer = build_optimizer(OptimizerSection(), SnapshotSection(), steps, epochs)
    ends = list(range(cycle_epochs * steps, epochs * steps + 1, cycle_epochs * steps))
    assert schedule_cycle_ends(optimizer, epochs * steps) == ends and ends[-1] == epochs * steps
    optimizer.iterations.assign(epochs * steps)
    assert round_stop_epoch(optimizer, epochs, 1, steps) == epochs + cycle_epochs


def steps_per_epoch(tmp_path) -> int:
    prepared = PreparedData.load(next((tmp_path / "outputs" / "data").iterdir()))
    return len(prepared.y_train) // 4  # tiny_config's batch size


@pytest.mark.usefixtures("prefect_api")
def test_growth_worse_on_validation_registers_the_pre_growth_ensemble_and_says_why(tmp_path, tracking):
    # Each later SGDR cycle runs at 100x the learning rate of the one before: the growth cycles wreck the model.
    result = train_flow(growth_config(tmp_path, **{"snapshots.lr_multiplier": 100.0}), tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(result["run_id"])

    assert parent.data.tags["growth_outcome"] == "pre-growth"
    assert "worse than" in parent.data.tags["growth_reason"]
    # Evaluated and registered: the training cycle's snapshots only (1 per member), at the starting widths.
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert [group.hidden_units for group in predictor.groups] == [[8, 8]]
    assert parent.data.metrics["test/num_members"] == MEMBERS
    assert client.get_model_version_by_alias("test-ensemble", "champion").run_id == result["run_id"]
    for member_run in result["member_run_ids"]:  # the widths of the model passed on
        params = client.get_run(member_run).data.params
        assert (params["final_hidden_units"], params["final_width"]) == ("[8, 8]", "8")

    # Each round ran on from the 1-epoch cap to the end of its cycle: the splits happen at cycle ends.
    rounds = sorted(client.get_metric_history(parent.info.run_id, "growth/epochs"), key=lambda m: m.step)
    epochs = [m.value for m in rounds]
    assert epochs == [CYCLE_EPOCHS, CYCLE_EPOCHS]
    # `lr` goes on through the growth steps, the global step continuing from training's.
    total_epochs = CYCLE_EPOCHS + sum(epochs)
    lr = client.get_metric_history(parent.info.run_id, "schedule/lr")
    assert sorted(m.step for m in lr) == list(range(1, int(total_epochs) * steps_per_epoch(tmp_path) + 1))
    # The second growth cycle starts at 0.02 x 100**2, halved because the split doubled the width 8 -> 16.
    assert max(m.value for m in lr) == pytest.approx(0.02 * 100**2 / 2)


def combiner_accuracies(tmp_path, run_id: str, name: str) -> dict[str, float]:
    """The validation accuracy of each combiner on the members of the flow run's `<name>.keras`."""
    prepared = PreparedData.load(next((tmp_path / "outputs" / "data").iterdir()))
    model = load_member_model(tmp_path / "outputs" / "runs" / run_id / f"{name}.keras")
    log_probs = model.predict_members(prepared.x_val, log_probs=True)
    return {
        m: evaluate_classification(log_probs, prepared.y_val, method=m, log_probs=True)["accuracy"]
        for m in COMBINERS
    }


@pytest.mark.usefixtures("prefect_api")
def test_growth_not_worse_on_validation_registers_the_grown_ensemble(tmp_path, tracking):
    """... growth monitoring the ensemble's accuracy, its members combined by `evaluation.combiner`."""
    overrides = {
        "model.hidden_units": [2],
        "growth.max_rounds": 2,
        "growth.monitor": "val_ensemble_accuracy",
        "evaluation.combiner": "geometric",
    }
    result = train_flow(growth_config(tmp_path, **overrides), tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    parent = client.get_run(result["run_id"])
    # The monitored values before growth (round 0's start) and of the grown model (the last round's, which ends
    # without a split) are the geometric ensemble's accuracy. (On these rows the mean gives the same values:
    # tests/ensemble/test_train.py tells the combiners apart.)
    rounds = client.get_metric_history(parent.info.run_id, "growth/val_start")
    start = min(rounds, key=lambda m: m.step).value
    grown = max(
        client.get_metric_history(parent.info.run_id, "growth/val_before_split"), key=lambda m: m.step
    )
    accuracies = [combiner_accuracies(tmp_path, result["run_id"], name) for name in ("model", "grown")]
    assert (start, grown.value) == pytest.approx([a["geometric"] for a in accuracies])

    assert parent.data.tags["growth_outcome"] == "grown", parent.data.tags["growth_reason"]
    predictor = EnsemblePredictor.load(result["predictor_dir"])
    assert [group.hidden_units for group in predictor.groups] == [[8], [2]]  # grown 2 -> 4 -> 8, snapshots
    for member_run in result["member_run_ids"]:
        params = client.get_run(member_run).data.params
        widths = (params["hidden_units"], params["final_hidden_units"], params["final_width"])
        assert widths == ("[2]", "[8]", "8")  # started at 2, registered at 8


def test_growth_log_lines_count_epochs_within_each_round_and_format_every_value():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x, y_val=y)
    model = FusedMLP(2, 4, (3,), task="multiclass", num_classes=2, seed=0)
    lines = []
    _, _, rounds = grow_rounds(
        model,
        keras.optimizers.Adam(1e-2),
        data,
        TrainConfig(epochs=2, batch_size=16, train_metrics=False),
        GrowthConfig(max_rounds=1, patience=5),  # no plateau within 2 epochs: each round runs to its cap
        callbacks=[RoundProgress(2, lines.append)],
        initial_epoch=10,  # as after training: the epoch count goes on, the display counts within the round
    )
    assert [line.split("  loss")[0] for line in lines] == [
        "growth round 1/2 (width 3)  epoch 1/2",
        "growth round 1/2 (width 3)  epoch 2/2",
        "growth round 2/2 (width 6)  epoch 1/2",
        "growth round 2/2 (width 6)  epoch 2/2",
    ]
    first, last = (describe_round(r, "val_accuracy") for r in rounds)
    value = r"\d\.\d{4}"
    assert re.fullmatch(
        rf"growth round 1: width 3, 2 epochs \(ended by epoch cap\), val_accuracy {value} -> {value}; "
        rf"split to 6 \(layer 0: member 0 units \[0, 1, 2\]\), val_accuracy {value} after the split",
        first,
    )
    assert re.fullmatch(
        rf"growth round 2: width 6, 2 epochs \(ended by epoch cap\), val_accuracy {value} -> {value}; "
        r"last round, no split \(growth stopped: max_rounds\)",
        last,
    )


@pytest.mark.usefixtures("prefect_api")
def test_splitting_growth_logs_the_units_each_split_chose(tmp_path, tracking):
    config = growth_config(
        tmp_path,
        **{"model.hidden_units": [2], "growth.strategy": "splitting", "growth.units_per_split": None},
    )
    result = train_flow(config, tracking)
    client = MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    table = json.loads(
        Path(client.download_artifacts(result["run_id"], "growth_splits.json", str(tmp_path))).read_text()
    )
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    split = client.get_metric_history(result["run_id"], "growth/units_split")
    k = int(next(m.value for m in split if m.step == 0))
    assert 1 <= k <= 2  # at most the width (a doubling), at least one unit with a negative index
    assert len(rows) == MEMBERS * k and {r["member"] for r in rows} == set(range(MEMBERS))
    assert all(r["round"] == 0 and r["layer"] == 0 and r["unit"] in (0, 1) for r in rows)
    assert min(r["splitting_index"] for r in rows) < 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"growth.anneal_epochs": 2}, "growth.anneal_epochs needs snapshots.enabled=false"),
        (
            {"growth.strategy": "targeted", "growth.units_per_split": None},
            "growth.units_per_split must be an int",
        ),
    ],
)
def test_growth_config_mistakes_fail_at_parse_time_with_one_line(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        growth_config(tmp_path, **overrides)
    assert (
        growth_config(
            tmp_path, **{"growth.anneal_epochs": 2, "snapshots.enabled": False}
        ).growth.anneal_epochs
        == 2
    )


def test_growth_log_lines_count_the_anneal_epochs_within_their_round():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x, y_val=y)
    lines = []
    grow_rounds(
        FusedMLP(2, 4, (3,), task="multiclass", num_classes=2, seed=0),
        keras.optimizers.Adam(1e-2),
        data,
        TrainConfig(epochs=2, batch_size=16, train_metrics=False),
        GrowthConfig(max_rounds=1, patience=5, anneal_epochs=1),  # 2 epochs to the cap, then 1 annealing
        callbacks=[RoundProgress(2, lines.append)],
    )
    assert [line.split("  loss")[0] for line in lines] == [
        "growth round 1/2 (width 3)  epoch 1/2",
        "growth round 1/2 (width 3)  epoch 2/2",
        "growth round 1/2 (width 3)  epoch 3/3",
        "growth round 2/2 (width 6)  epoch 1/2",
        "growth round 2/2 (width 6)  epoch 2/2",
        "growth round 2/2 (width 6)  epoch 3/3",
    ]
