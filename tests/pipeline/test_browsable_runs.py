"""Runs a person can browse: names from what a run is, grouped metric names, descriptions of runs and model
versions that say why, logged models named after their run, and the Prefect side (flow-run name, summary)."""

from __future__ import annotations

import dataclasses

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.compare import compare_flow
from flows.train import train_flow
from tasks.tracking import DESCRIPTION_TAG
from tests.pipeline.helpers import MEMBERS, tiny_config
from tests.pipeline.servers import store_client

pytestmark = pytest.mark.usefixtures("prefect_api")
GROUPS = {"train", "val", "test", "schedule", "snapshot"}


def summary_of(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["run-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        return artifact.data


def flow_run_name(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def test_a_train_run_and_its_version_say_what_they_are_and_why(tmp_path, tracking):
    tracking = dataclasses.replace(tracking, ui_url="http://mlflow.example.org:8080")
    good = train_flow(tiny_config(tmp_path), tracking)
    worse_config = tiny_config(
        tmp_path, **{"model.members": 1, "snapshots.lr_init": 1e-6, "snapshots.lr_min": 0.0}
    )
    worse = train_flow(worse_config, tracking)
    client = store_client(tracking.tracking_uri)

    parent = client.get_run(worse["run_id"])
    assert parent.info.run_name == "wine 1x[8,8] sgdr-2"
    tags = parent.data.tags
    assert (
        tags["prefect.flow_run_name"] == "wine 1x[8,8] sgdr-2" == flow_run_name(tags["prefect.flow_run_id"])
    )
    assert {key.split("/")[0] for key in parent.data.metrics} >= GROUPS
    assert all("/" in key for key in parent.data.metrics)
    assert (
        "val/ensemble_accuracy" in parent.data.metrics and "val/member_mean_accuracy" in parent.data.metrics
    )

    accuracy, champion = worse["metrics"]["accuracy"], good["metrics"]["accuracy"]
    description = tags[DESCRIPTION_TAG]
    assert f"| accuracy | {accuracy:.4f} |" in description
    assert "Ensemble vs best member (member 0)" in description
    assert f"@challenger**: its test accuracy {accuracy:.4f} does not beat {champion:.4f}" in description

    version = client.get_model_version("test-ensemble", worse["registration"]["version"])
    assert f"does not beat {champion:.4f} of the champion before it (version 1" in version.description
    first = client.get_model_version("test-ensemble", good["registration"]["version"])
    assert "**@champion**: the first champion of `test-ensemble`" in first.description

    (output,) = parent.outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "wine-1x-8-8-sgdr-2"

    members = [client.get_run(run) for run in good["member_run_ids"]]
    assert [run.info.run_name for run in members] == [f"member-{n:02d}" for n in range(MEMBERS)]
    assert all(all("/" in key for key in run.data.metrics) for run in members)

    summary = summary_of(tags["prefect.flow_run_id"])
    assert description in summary
    assert (
        f"(http://mlflow.example.org:8080/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        in summary
    )
    assert "#/models/test-ensemble/versions/2" in summary


def test_the_compare_parent_holds_the_table_summary_metrics_and_a_verdict(tmp_path, tracking):
    result = compare_flow(tiny_config(tmp_path), tracking)
    client = store_client(tracking.tracking_uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.run_name == f"compare wine {MEMBERS}x[8,8]"
    by_kind = {row["kind"]: row for row in result["rows"]}
    metrics = parent.data.metrics
    assert metrics["compare/ensemble_accuracy"] == pytest.approx(by_kind["ensemble"]["accuracy"])
    assert metrics["compare/gain_vs_single"] == pytest.approx(
        by_kind["ensemble"]["accuracy"] - by_kind["single"]["accuracy"]
    )
    verdict = parent.data.tags["verdict"]
    assert verdict == result["verdict"] and verdict.startswith("The ensemble ")
    assert f"({by_kind['ensemble']['accuracy']:.4f} vs {by_kind['single']['accuracy']:.4f})" in verdict
    assert parent.data.tags[DESCRIPTION_TAG].startswith(f"**{verdict}**")
    artifacts = {f.path for f in client.list_artifacts(result["run_id"], "comparison")}
    assert {"comparison/comparison.json", "comparison/comparison.md"} <= artifacts
    assert verdict in summary_of(parent.data.tags["prefect.flow_run_id"])
