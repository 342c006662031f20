"""The compare flow: ensemble vs single vs equal-FLOPs single as tagged child runs, the plot and the grid table."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ensemble.model.flops import ensemble_flops, mlp_flops
from flows.compare import compare_flow
from tests.pipeline.helpers import MEMBERS, private_tracking, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")

WINE_FEATURES, WINE_CLASSES = 13, 3
HIDDEN = [8, 8]
GRID = {
    "base_width": 4,
    "width_multipliers": [1, 2],
    "max_members": 2,
    "epochs": 1,
    "equal_flops_members": [2],
    "equal_flops_seeds": 1,
    "subsets": 1,
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, migrated_store, prefect_api):
    """One compare_flow (with the small grid) on a private store: `(result, client, child runs by kind)`."""
    root = tmp_path_factory.mktemp("compare")
    settings = private_tracking(root, migrated_store)
    result = compare_flow(tiny_config(root, **{"model.hidden_units": HIDDEN}), settings, grid=GRID)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    parent = client.get_run(result["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'"
    )
    return result, client, {run.data.tags["kind"]: run for run in children}, len(children)


def test_compare_flow_logs_one_tagged_child_run_per_candidate(compared):
    result, client, by_kind, count = compared
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert count == 3
    assert set(by_kind) == {"ensemble", "single", "equal_flops_single"}
    for run in by_kind.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["comparison"] == result["run_id"]
        assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0
        assert run.data.metrics["cost/flops_per_sample"] > 0
    assert by_kind["ensemble"].data.params["members"] == str(MEMBERS)
    assert by_kind["single"].data.params["members"] == "1"
    assert [row["kind"] for row in result["rows"]] == ["ensemble", "single", "equal_flops_single"]


def test_single_costs_one_member_and_ensemble_costs_all_members(compared):
    _, _, by_kind, _ = compared
    member = mlp_flops(WINE_FEATURES, HIDDEN, WINE_CLASSES)
    assert by_kind["single"].data.metrics["cost/flops_per_sample"] == member
    assert by_kind["ensemble"].data.metrics["cost/flops_per_sample"] == MEMBERS * member


def test_equal_flops_single_is_the_widest_uniform_mlp_within_the_ensemble_flops(compared):
    _, _, by_kind, _ = compared
    budget = ensemble_flops(WINE_FEATURES, HIDDEN, WINE_CLASSES, MEMBERS)
    single = by_kind["equal_flops_single"]
    width = int(single.data.params["width"])
    depth = len(HIDDEN)
    assert single.data.metrics["cost/flops_per_sample"] == mlp_flops(
        WINE_FEATURES, [width] * depth, WINE_CLASSES
    )
    assert (
        single.data.metrics["cost/flops_per_sample"]
        <= by_kind["ensemble"].data.metrics["cost/flops_per_sample"]
    )
    wider = mlp_flops(WINE_FEATURES, [width + 1] * depth, WINE_CLASSES)
    assert wider > budget  # one unit wider would cost more than the ensemble
    assert width > max(HIDDEN)


def test_parent_run_holds_the_accuracy_vs_flops_plot_and_the_grid_table(compared, tmp_path):
    result, client, _, _ = compared
    plots = [f.path for f in client.list_artifacts(result["run_id"], "plots")]
    assert plots == ["plots/accuracy_vs_flops.png"]
    png = Path(client.download_artifacts(result["run_id"], "plots/accuracy_vs_flops.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    grid = Path(client.download_artifacts(result["run_id"], "comparison/comparison_grid.md", str(tmp_path)))
    lines = grid.read_text().splitlines()
    body = [line for line in lines[2:] if line.startswith("|")]
    # widths 4 and 8 x 1..2 members, plus one equal-FLOPs single per (2 members, width)
    assert len(body) == 2 * 2 + 2
    assert sum("| equal_flops_single |" in line for line in body) == 2
    assert any("| 2×8 |" in line for line in body)
