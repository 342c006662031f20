"""The member-model seam: `FusedMLP` implements `MemberModel`; snapshots, the predictor and shards use only it."""

import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from ensemble.model.flops import ensemble_flops
from ensemble.model.fused import FusedMLP
from ensemble.model.member_model import MemberModel, find_model_class, load_member_model, model_class_name
from ensemble.predictor import stack_weight_sets
from ensemble.snapshots.collector import Snapshots
from ensemble.training.shards import merge_models


def perturbed(model: FusedMLP, seed: int = 0) -> FusedMLP:
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.3 * rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


# The seam's contract: what snapshots, the predictor, shards, checkpoints and FLOP counts may use.
CONTRACT = (
    "CONFIG_KEYS", "members", "member_seeds", "task", "input_dim", "name", "output_dim", "get_config",
    "get_weights", "from_weights", "stacked_config", "stacked_outputs", "export_member", "member_weights",
    "member_model", "predict_members", "forward_flops", "save",
)  # fmt: skip


def test_fused_mlp_is_a_member_model_and_the_protocol_requires_the_whole_contract():
    model = FusedMLP(2, 3, (4,), task="binary")
    assert isinstance(model, MemberModel)
    everything = SimpleNamespace(**{name: getattr(model, name) for name in CONTRACT})
    assert isinstance(everything, MemberModel)
    for name in CONTRACT:
        partial = SimpleNamespace(**{other: getattr(model, other) for other in CONTRACT if other != name})
        assert not isinstance(partial, MemberModel), f"the protocol does not require {name!r}"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_stacked_outputs_without_a_model_equal_the_fused_forward_pass(task):
    model = perturbed(FusedMLP(3, 5, (6, 4), task=task, num_classes=3, activation="tanh", seed=1))
    x = np.random.default_rng(2).normal(size=(7, 5)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(np.broadcast_to(x, (3, 7, 5))))  # (N, B, out)
    got = FusedMLP.stacked_outputs(model.get_config(), model.get_weights(), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        FusedMLP.stacked_outputs(model.get_config(), model.get_weights(), x[:, :4])


def test_export_member_is_member_model():
    model = perturbed(FusedMLP(2, 3, (4,), task="multiclass", num_classes=3))
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    exported = FusedMLP.export_member(model.get_config(), model.member_weights(1), name="m")
    np.testing.assert_allclose(exported.predict(x, verbose=0), model.member_model(1).predict(x, verbose=0))
    assert exported.name == "m"


def test_forward_flops_count_every_member_of_the_model():
    model = FusedMLP(4, 10, (8, 6), task="multiclass", num_classes=3)
    assert (
        model.forward_flops()
        == ensemble_flops(10, (8, 6), 3, 4)
        == 4 * ((2 * 10 * 8 + 8) + (2 * 8 * 6 + 6) + (2 * 6 * 3 + 3))
    )


def test_stack_weight_sets_takes_the_widths_from_the_weights_not_the_template():
    template = FusedMLP(2, 3, (4,), task="binary", seed=0)
    wider = perturbed(FusedMLP(2, 3, (7,), task="binary", seed=5))  # e.g. snapshots after a growth round
    x = np.random.default_rng(1).normal(size=(6, 3)).astype("float32")
    stacked = stack_weight_sets(template, [wider.member_weights(1), wider.member_weights(0)], name="stacked")
    assert stacked.hidden_units == [7] and stacked.name == "stacked"
    np.testing.assert_allclose(stacked.predict_members(x), wider.predict_members(x)[::-1], rtol=1e-6)


def test_merged_shards_keep_every_members_seed_and_weights():
    first, second = perturbed(FusedMLP(2, 3, (4,), seed=0), 1), perturbed(FusedMLP(1, 3, (4,), seed=9), 2)
    merged = merge_models([first, second])
    assert merged.member_seeds == first.member_seeds + second.member_seeds
    x = np.random.default_rng(3).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(
        merged.predict_members(x),
        np.concatenate([first.predict_members(x), second.predict_members(x)]),
        rtol=1e-6,
    )


def test_snapshots_store_the_model_class_and_older_files_load_as_fused(tmp_path):
    model = perturbed(FusedMLP(2, 3, (4,), task="binary"))
    snapshots = Snapshots(model.get_config(), model_class=FusedMLP)
    snapshots.add_cycle(0, 10, model.get_weights())
    snapshots.save(tmp_path)
    meta = json.loads((tmp_path / "snapshots.json").read_text())
    assert meta["model_class"] == model_class_name(FusedMLP) == "ensemble>FusedMLP"
    assert Snapshots.load(tmp_path).model_class is FusedMLP
    del meta["model_class"]  # written before the class was stored
    (tmp_path / "snapshots.json").write_text(json.dumps(meta))
    x = np.random.default_rng(0).normal(size=(3, 3)).astype("float32")
    np.testing.assert_allclose(
        Snapshots.load(tmp_path).predict_members(x), model.predict_members(x), rtol=1e-6
    )
    assert find_model_class(None) is FusedMLP
    with pytest.raises(ValueError, match="No member-model class is registered as 'ensemble>Nope'"):
        find_model_class("ensemble>Nope")


def test_load_member_model_reads_a_saved_model(tmp_path):
    model = perturbed(FusedMLP(2, 3, (4,), task="regression"))
    model.save(tmp_path / "m.keras")
    loaded = load_member_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(3, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict_members(x), model.predict_members(x))
