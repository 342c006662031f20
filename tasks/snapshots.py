"""Prefect task of the snapshot step: the N x M (member, cycle) weight sets as one fused group.

Each member run already holds its snapshots' `snapshot/val_loss` / `snapshot/val_accuracy` at `step` = cycle,
logged live as each cycle ended (`tasks.live_logging.MlflowEpochLogger`; step-indexed metrics, so the UI plots a member's
snapshots as a curve). This step logs the parent run's snapshot table and `snapshot/ensemble_val_accuracy` (or
`_val_rmse`) of the ensemble of cycles `0..k` at `step` = k, its members combined with the configured
`evaluation.combiner` (as the test scores and the served model combine them; regression: the mean). The
snapshots' test scores (`snapshot/test_*` on the member runs, `step` = cycle) come later, from `tasks.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ensemble.data import PreparedData
from ensemble.evaluation.metrics import check_combiner
from ensemble.model.fused import load_fused
from ensemble.predictor import stack_weight_sets
from ensemble.snapshots.collector import Snapshots
from tasks.config import SnapshotSection
from tasks.tracking import Tracker, TrackingSettings
from tasks.trained import Trained


@task(name="collect-snapshots", retries=1, cache_policy=NO_CACHE)
def collect_snapshots_task(
    settings: TrackingSettings,
    run_id: str,
    data_dir: str,
    trained: Trained,
    snapshots: SnapshotSection,
    run_dir: str,
    *,
    combiner: str,
) -> str:
    """Stack the kept snapshots into one fused model `(N x M members)`; returns its `.keras` path.

    `combiner`: a name in `ensemble.evaluation.metrics.COMBINERS` (`evaluation.combiner`), for the validation curve.
    """
    check_combiner(combiner, "combiner")
    tracker = Tracker(settings)
    collected = Snapshots.load(trained.snapshot_dir)
    prepared = PreparedData.load(data_dir)
    keys = collected.keys()  # sorted by (cycle, member)
    table = [
        {"member": m, "cycle": c, "step": collected.steps[c], **collected.scores.get((m, c), {})}
        for m, c in keys
    ]
    tracker.log_table(run_id, table, "snapshots.json")
    name = "rmse" if prepared.task == "regression" else "accuracy"
    scores = collected.growing_ensemble_scores(prepared.x_val, prepared.y_val, method=combiner)
    curve = {  # step k -> metrics of the ensemble of cycles 0..k
        k: {f"snapshot/ensemble_val_{name}": score[name], "snapshot/count": score["count"]}
        for k, score in enumerate(scores)
    }
    tracker.log_metrics_at_steps(run_id, curve)
    template = load_fused(trained.model_path)
    group = stack_weight_sets(template, [collected.weights[key] for key in keys], name="snapshot_ensemble")
    path = Path(run_dir) / "snapshot_ensemble.keras"
    group.save(path)
    return str(path)
