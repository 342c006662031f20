import numpy as np
import pandas as pd
import pytest

from ensemble.data import DataConfig, prepare_data
from ensemble.evaluation import compare, plots
from ensemble.evaluation.compare import CompareConfig
from ensemble.model.flops import ensemble_flops, mlp_flops

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = CompareConfig(
    base_width=4,
    width_multipliers=(1, 2),
    max_members=3,
    epochs=2,
    batch_size=16,
    learning_rate=0.01,
    equal_flops_members=(2, 3),
    equal_flops_seeds=2,
    subsets=3,
)


@pytest.fixture(scope="module")
def wine():
    return prepare_data(DataConfig(source="wine", seed=0))


@pytest.fixture(scope="module")
def tiny_rows(wine):
    return compare.run_comparison(wine, TINY)


def test_first_members_of_a_pool_equal_a_smaller_run(wine):
    # The comparison forms n-member ensembles from the first n members of one larger fused run.
    pool = compare.train_pool(wine, width=4, members=3, config=TINY)  # (3, B, C)
    alone = compare.train_pool(wine, width=4, members=2, config=TINY)  # (2, B, C)
    np.testing.assert_allclose(pool[:2], alone, atol=1e-5)


def test_tiny_comparison_has_every_width_size_and_equal_flops_single(tiny_rows, wine):
    assert all(tuple(row) == compare.ROW_KEYS for row in tiny_rows)
    base = [(r["width"], r["members"]) for r in tiny_rows if r["kind"] != "equal_flops_single"]
    assert base == [(w, n) for w in (4, 8) for n in (1, 2, 3)]
    assert {r["kind"] for r in tiny_rows if r["members"] == 1 and not r["matches"]} == {"single"}
    d, out = wine.num_features, wine.num_outputs
    for row in tiny_rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["nll"] > 0 and 0.0 <= row["ece"] <= 1.0
        if row["kind"] == "ensemble":
            assert row["flops"] == row["members"] * mlp_flops(d, [row["width"]] * 2, out)
    matched = [r for r in tiny_rows if r["kind"] == "equal_flops_single"]
    assert sorted(m for r in matched for m in r["matches"]) == [(n, w) for n in (2, 3) for w in (4, 8)]
    for row in matched:
        budgets = [ensemble_flops(d, [w] * 2, out, n) for n, w in row["matches"]]
        assert row["flops"] <= min(budgets)  # never more costly than the ensembles it stands for
        assert mlp_flops(d, [row["width"] + 1] * 2, out) > min(budgets)  # and the widest such MLP
    assert any(row["pareto"] for row in tiny_rows)
    pairs = compare.equal_flops_pairs(tiny_rows)
    assert sorted((e["members"], e["width"]) for e, _ in pairs) == [(n, w) for n in (2, 3) for w in (4, 8)]
    assert all(single["flops"] <= ens["flops"] for ens, single in pairs)


def test_tiny_comparison_writes_table_and_png(tiny_rows, tmp_path):
    table = compare.rows_to_markdown(tiny_rows)
    assert table.count("\n") == len(tiny_rows) + 2
    assert "equal_flops_single" in table and "★" in table
    summary = compare.beats_to_markdown(tiny_rows)
    assert summary.count("\n") == 2 + sum(r["kind"] != "ensemble" for r in tiny_rows)
    head_to_head = compare.equal_flops_to_markdown(tiny_rows)
    assert head_to_head.count("\n") == 2 + 4  # ensembles 2x4, 3x4, 2x8, 3x8 against their equal-FLOPs single
    path = plots.plot_accuracy_vs_flops(tiny_rows, tmp_path / "accuracy_vs_flops.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_member_windows_are_cyclic_and_start_with_the_first_members():
    assert compare.member_windows(4, 2, 8) == [[0, 1], [1, 2], [2, 3], [3, 0]]
    assert compare.member_windows(4, 3, 1) == [[0, 1, 2]]
    assert compare.member_windows(4, 4, 8) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="Argument `size`"):
        compare.member_windows(4, 5, 1)


def _row(kind, width, members, flops, accuracy):
    return {"kind": kind, "width": width, "members": members, "flops": flops, "accuracy": accuracy}


def test_beats_at_equal_flops_needs_at_least_the_accuracy_at_no_more_flops():
    small, big = _row("single", 8, 1, 100, 0.80), _row("single", 32, 1, 1000, 0.90)
    cheap_good = _row("ensemble", 8, 4, 400, 0.91)
    cheap_bad = _row("ensemble", 8, 2, 200, 0.85)
    costly = _row("ensemble", 32, 2, 2000, 0.99)
    tie = _row("equal_flops_single", 20, 1, 400, 0.91)
    pairs = compare.beats_at_equal_flops([small, big, cheap_good, cheap_bad, costly, tie])
    assert [(e["members"], e["width"], s["width"]) for e, s in pairs] == [(4, 8, 20), (4, 8, 32)]


def test_rows_to_markdown_labels_equal_flops_rows_and_marks_the_front():
    row = {
        **_row("equal_flops_single", 47, 1, 11_000, 0.9),
        "params": 5_000,
        "accuracy_std": 0.01,
        "nll": 0.3,
        "brier": 0.1,
        "ece": 0.05,
        "matches": [(4, 16)],
        "pareto": True,
    }
    line = compare.rows_to_markdown([row]).splitlines()[-1]
    assert "1×47 (≈4×16)" in line and "11,000" in line and "★" in line


def test_compare_config_round_trips_and_validates():
    assert CompareConfig(**TINY.get_config()) == TINY
    assert CompareConfig(width_multipliers=[1, 2]).widths == (16, 32)
    with pytest.raises(
        ValueError, match="Argument `max_members` must be an int >= 1. Received: max_members=0"
    ):
        CompareConfig(max_members=0)
    with pytest.raises(ValueError, match="`equal_flops_members` must be an int in \\[2, max_members=3\\]"):
        CompareConfig(max_members=3, equal_flops_members=(2, 4))
    with pytest.raises(ValueError, match="Argument `combiner`"):
        CompareConfig(combiner="median")
    with pytest.raises(ValueError, match="Argument `width_multipliers`"):
        CompareConfig(width_multipliers=(1, 1))


def test_run_comparison_rejects_regression():
    frame = pd.DataFrame({"a": np.linspace(0, 1, 40), "target": np.linspace(0.5, 3.7, 40)})
    data = prepare_data(DataConfig(source="frame", task="regression"), frame=frame)
    with pytest.raises(ValueError, match="classification task"):
        compare.run_comparison(data, TINY)
