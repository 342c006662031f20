"""`Tracker.run`: the MLflow run lifecycle every flow (and the compare candidates) goes through."""

from __future__ import annotations

import pytest

from tasks.tracking import Tracker


def statuses(tracker: Tracker, *run_ids: str) -> list[str]:
    return [tracker.client.get_run(run_id).info.status for run_id in run_ids]


def test_a_block_that_raises_leaves_the_run_and_its_opened_members_failed(tracking):
    tracker = Tracker(tracking)
    parent = tracker.start_run("parent")
    other = tracker.start_run(
        "not a member", tags={"kind": "candidate", "candidate": "0"}, parent_run_id=parent
    )
    with pytest.raises(KeyboardInterrupt), tracker.run(parent, nested="member") as run_id:
        members = tracker.open_child_runs(run_id, "member", {0: {}, 1: {}})
        raise KeyboardInterrupt  # a cancellation too, not only an Exception
    assert statuses(tracker, parent, *members) == ["FAILED"] * 3
    assert statuses(tracker, other) == ["RUNNING"]  # another kind of nested run is not this block's to close


def test_a_block_that_ends_finishes_the_run_and_its_members(tracking):
    tracker = Tracker(tracking)
    with tracker.run(tracker.start_run("parent"), nested="member") as run_id:
        members = tracker.open_child_runs(run_id, "member", {0: {}, 1: {}})
        assert statuses(tracker, run_id, *members) == ["RUNNING"] * 3
    assert statuses(tracker, run_id, *members) == ["FINISHED"] * 3


def test_without_nested_only_the_run_itself_is_closed(tracking):
    tracker = Tracker(tracking)
    with pytest.raises(ValueError, match="boom"), tracker.run(tracker.start_run("candidate")) as run_id:
        member = tracker.open_child_runs(run_id, "member", {0: {}})[0]
        raise ValueError("boom")
    assert statuses(tracker, run_id, member) == ["FAILED", "RUNNING"]


def test_a_member_closed_inside_the_block_keeps_its_end_but_fails_with_the_block(tracking):
    tracker = Tracker(tracking)
    with tracker.run(tracker.start_run("parent"), nested="member") as run_id:
        closed, open_ = tracker.open_child_runs(run_id, "member", {0: {}, 1: {}})
        tracker.finish_run(closed)
        ended = tracker.client.get_run(closed).info.end_time
    assert statuses(tracker, run_id, closed, open_) == ["FINISHED"] * 3
    assert tracker.client.get_run(closed).info.end_time == ended  # not closed a second time

    with pytest.raises(RuntimeError), tracker.run(tracker.start_run("parent"), nested="member") as run_id:
        closed = tracker.open_child_runs(run_id, "member", {0: {}})[0]
        tracker.finish_run(closed)
        raise RuntimeError("a later step failed")
    assert statuses(tracker, run_id, closed) == ["FAILED", "FAILED"]
