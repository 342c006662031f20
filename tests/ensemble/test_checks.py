"""The one integer check, and the library arguments that go through it."""

import numpy as np
import pytest

from ensemble.checks import check_int, is_int
from ensemble.evaluation.compare import CompareConfig
from ensemble.evaluation.metrics import expected_calibration_error
from ensemble.evaluation.selection import bagged_selection
from ensemble.growth.rounds import GrowthConfig
from ensemble.model.flops import mlp_flops
from ensemble.optim.schedules import SGDRSchedule
from ensemble.snapshots.collector import SnapshotCollector
from ensemble.snapshots.keras_snapshot import SnapshotEnsembleCallback
from ensemble.training.shards import shard_ranges
from ensemble.training.sweep import SweepConfig


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.int32(0)])
def test_python_and_numpy_integers_are_ints(value):
    assert is_int(value) and is_int(value, 0)


@pytest.mark.parametrize("value", [True, False, 2.0, np.float64(2), "2", None])
def test_bools_floats_and_strings_are_not_ints(value):
    assert not is_int(value)


def test_check_int_names_the_argument_the_bound_and_the_value():
    assert check_int(np.int64(4), "members") == 4 and type(check_int(np.int64(4), "members")) is int
    with pytest.raises(ValueError, match=r"^Argument `members` must be an int >= 1\. Received: members=0$"):
        check_int(0, "members")
    with pytest.raises(ValueError, match=r"Argument `seed` must be an int >= 0\. Received: seed=True"):
        check_int(True, "seed", minimum=0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: mlp_flops(3, [2.0], 1), "`hidden_units[0]` must be an int >= 1"),
        (
            lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 1], bins=True),
            "`bins` must be an int >= 1",
        ),
        (lambda: CompareConfig(depth=0), "`depth` must be an int >= 1"),
        (lambda: CompareConfig(seed=-1), "`seed` must be an int >= 0"),
        (lambda: GrowthConfig(patience=1.0), "`patience` must be an int >= 0"),
        (
            lambda: GrowthConfig(strategy="targeted", units_per_split=True),
            "`units_per_split` must be an int >= 1",
        ),
        (lambda: SGDRSchedule.from_epochs(2, steps_per_epoch=10.5), "`steps_per_epoch` must be an int >= 1"),
        (lambda: SGDRSchedule(cycle_length=10).steps_for_cycles(0), "`num_cycles` must be an int >= 1"),
        (lambda: SweepConfig(repeats=1.5), "`repeats` must be an int >= 1"),
        (lambda: shard_ranges(10, 0), "`members_per_shard` must be an int >= 1"),
        (lambda: SnapshotCollector(skip_first=-1), "`skip_first` must be an int >= 0"),
        (lambda: SnapshotCollector(keep_best=2.0), "`keep_best` must be an int >= 1"),
        (
            lambda: SnapshotEnsembleCallback(ensemble_options={"num_snapshots": 0}),
            "`num_snapshots` must be an int >= 1",
        ),
        (lambda: bagged_selection(np.full((2, 3, 2), 0.5), [0, 1, 0], bags=0), "`bags` must be an int >= 1"),
    ],
)
def test_every_integer_argument_is_checked_the_same_way(make, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_numpy_integers_are_accepted_by_every_config():
    assert GrowthConfig(patience=np.int64(2), max_rounds=np.int64(1)).patience == 2
    assert CompareConfig(depth=np.int64(2)).depth == 2
