"""Member runs' test metrics come from each member's own final weights; its snapshots' test scores are snapshot
metrics at `step` = cycle; the Prefect table has one row per (member, cycle), the final weights and the ensemble.

The reference is the slow obvious one: each member (and each snapshot) as a plain `keras.Sequential`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import accuracy, nll
from ensemble.model.fused import load_fused
from ensemble.snapshots.collector import Snapshots
from flows.train import train_flow
from tests.pipeline.helpers import EPOCHS, MEMBERS, private_tracking, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, migrated_store, prefect_api):
    """One train flow with snapshots on and growth off (the defaults): `(settings, result, run_dir, prepared)`."""
    root = tmp_path_factory.mktemp("member-evaluation")
    settings = private_tracking(root, migrated_store)
    config = tiny_config(root)
    result = train_flow(config, settings)
    run_dir = Path(config.output_dir).resolve() / "runs" / result["run_id"]
    prepared = PreparedData.load(next((root / "outputs" / "data").iterdir()))
    return settings, result, run_dir, prepared


def reference_scores(model, prepared: PreparedData) -> dict[str, float]:
    """Test accuracy and nll of one plain Keras member (softmax head: probabilities `(B, C)`)."""
    probs = model.predict(prepared.x_test, verbose=0)
    return {"accuracy": accuracy(probs, prepared.y_test), "nll": nll(probs, prepared.y_test)}


def test_member_runs_hold_the_test_metrics_of_their_own_final_weights(trained):
    settings, result, run_dir, prepared = trained
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    final = load_fused(run_dir / "model.keras")
    for n, member_run in enumerate(result["member_run_ids"]):
        expected = reference_scores(final.member_model(n), prepared)
        logged = client.get_run(member_run).data.metrics
        assert logged["test/nll"] == pytest.approx(expected["nll"], rel=1e-4)
        assert logged["test/accuracy"] == pytest.approx(expected["accuracy"])


def test_member_runs_hold_each_snapshots_test_metrics_at_its_cycle(trained):
    settings, result, run_dir, prepared = trained
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    snapshots = Snapshots.load(run_dir / "snapshots")
    for n, member_run in enumerate(result["member_run_ids"]):
        history = client.get_metric_history(member_run, "snapshot/test_nll")
        assert sorted(m.step for m in history) == list(range(EPOCHS))  # one per cycle, step = cycle
        for m in history:
            expected = reference_scores(snapshots.member_model(n, m.step), prepared)
            assert m.value == pytest.approx(expected["nll"], rel=1e-4)
        assert len(client.get_metric_history(member_run, "snapshot/test_accuracy")) == EPOCHS


def test_prefect_table_lists_every_member_and_cycle_then_the_ensemble(trained):
    settings, result, _, _ = trained
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    flow_run_id = client.get_run(result["run_id"]).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["ensemble-metrics"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    table = json.loads(artifact.data)
    expected_cells = [(n, c) for n in range(MEMBERS) for c in [*range(EPOCHS), "final"]]
    assert [(row["member"], row["cycle"]) for row in table] == [*expected_cells, ("ensemble", None)]
    for n, member_run in enumerate(result["member_run_ids"]):
        (final_row,) = [row for row in table if row["member"] == n and row["cycle"] == "final"]
        assert final_row["nll"] == pytest.approx(client.get_run(member_run).data.metrics["test/nll"])
    assert table[-1]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert set(table[-1]) == {"member", "cycle", "accuracy", "nll", "brier", "ece"}
