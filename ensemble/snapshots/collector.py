"""Snapshot ensembles of a fused run: every member's weights at every SGDR cycle end, addressed as (member, cycle).

A fused run of N members over M cycles yields N x M weight sets. `SnapshotCollector` (a callback of
`ensemble.training.train.fit`) stores them at each cycle end; `Snapshots` predicts with any subset of (member, cycle) pairs
and combines them with `ensemble.evaluation.metrics.combine`.

Axes: `(K, B, C)` = selected snapshots, batch, classes; `(N, in, out)` = members, layer input, layer output.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from ensemble.checks import check_int
from ensemble.evaluation.metrics import (
    accuracy,
    check_combiner,
    combine,
    combine_regression,
    monitor_mode,
    rmse,
)
from ensemble.model.member_model import DEFAULT_MODEL_CLASS, MemberModel, find_model_class, model_class_name
from ensemble.model.outputs import outputs_to_log_probs, outputs_to_predictions
from ensemble.training.train import evaluate_members

Key = tuple[int, int]  # (member, cycle)
MONITORS = {name: monitor_mode(name) for name in ("val_loss", "val_accuracy")}  # the per-member scores
PARTIAL_CYCLE = ("error", "ignore")


def select_best(scores: Mapping[Key, float], keep: int, mode: str = "max") -> set[Key]:
    """Per member, the `keep` (member, cycle) keys with the best score (`mode` "max" or "min"); ties keep the
    later cycle."""
    by_member: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for (member, cycle), score in scores.items():
        by_member[member].append((score if mode == "max" else -score, cycle))
    return {
        (member, cycle)
        for member, ranked in by_member.items()
        for _, cycle in sorted(ranked, reverse=True)[:keep]
    }


class Snapshots:
    """Member weight sets keyed by (member, cycle), with prediction over any subset.

    Args:
        model_config: `get_config()` of the run's model (task, activation, classes; widths come from the weights,
            so snapshots taken before and after a growth round can be mixed).
        weights: `{(member, cycle): one member's weights}` (`member_weights` order, e.g. `[W_0 (d, H), b_0 (H,),
            ..., W_head, b_head]` for a `FusedMLP`).
        steps: `{cycle: global step count at its end}`.
        scores: `{(member, cycle): {"val_loss": ..., "val_accuracy": ...}}` measured when the snapshot was taken.
        model_class: the run's member-model class (`ensemble.model.member_model.MemberModel`): it predicts with and
            exports the weight sets.
    """

    def __init__(
        self,
        model_config: Mapping,
        weights: Mapping[Key, list[np.ndarray]] | None = None,
        steps: Mapping[int, int] | None = None,
        scores: Mapping[Key, Mapping[str, float]] | None = None,
        model_class: type[MemberModel] = DEFAULT_MODEL_CLASS,
    ):
        for key in model_class.CONFIG_KEYS:
            if key not in model_config:
                raise ValueError(
                    f"Argument `model_config` must be a `{model_class.__name__}.get_config()` with key {key!r}. "
                    f"Received keys: {sorted(model_config)}"
                )
        self.model_class = model_class
        self.model_config = dict(model_config)
        self.weights: dict[Key, list[np.ndarray]] = {tuple(k): list(w) for k, w in (weights or {}).items()}
        self.steps: dict[int, int] = {int(c): int(s) for c, s in (steps or {}).items()}
        self.scores: dict[Key, dict[str, float]] = {tuple(k): dict(v) for k, v in (scores or {}).items()}

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def members(self) -> list[int]:
        return sorted({member for member, _ in self.weights})

    @property
    def cycles(self) -> list[int]:
        return sorted({cycle for _, cycle in self.weights})

    def add_cycle(self, cycle: int, step: int, stacked: Sequence[np.ndarray], scores: Mapping | None = None):
        """Stores every member of one cycle end: `stacked = [W_0 (N, d, H), b_0 (N, H), ...]`, `scores` of
        `(N,)` arrays keyed by monitor name."""
        self.steps[int(cycle)] = int(step)
        for member in range(stacked[0].shape[0]):
            self.weights[(member, int(cycle))] = [w[member] for w in stacked]
            if scores:
                self.scores[(member, int(cycle))] = {name: float(v[member]) for name, v in scores.items()}

    def keep(self, keys: Iterable[Key]) -> None:
        """Drops every snapshot not in `keys`."""
        keys = set(keys)
        for key in [k for k in self.weights if k not in keys]:
            del self.weights[key]
            self.scores.pop(key, None)

    def keys(self, members: Sequence[int] | None = None, cycles: Sequence[int] | None = None) -> list[Key]:
        """The stored (member, cycle) pairs with member in `members` and cycle in `cycles` (None: all), sorted by
        (cycle, member). E.g. the last 3 cycles: `keys(cycles=snapshots.cycles[-3:])`."""
        for name, wanted, stored in (("members", members, self.members), ("cycles", cycles, self.cycles)):
            if wanted is not None and (missing := sorted(set(wanted) - set(stored))):
                raise ValueError(
                    f"Argument `{name}` names {name} without snapshots: {missing}. Available: {stored}"
                )
        selected = [
            (m, c)
            for m, c in self.weights
            if (members is None or m in members) and (cycles is None or c in cycles)
        ]
        if not selected:
            raise ValueError(f"No snapshot matches members={members}, cycles={cycles}. Stored: {len(self)}.")
        return sorted(selected, key=lambda key: (key[1], key[0]))

    def predict_members(
        self,
        x,
        members: Sequence[int] | None = None,
        cycles: Sequence[int] | None = None,
        log_probs: bool = False,
    ) -> np.ndarray:
        """Predictions of the selected snapshots on one batch `x (B, d)`.

        Returns:
            Probabilities `(K, B, C)` (binary: `C = 2`; their logs, computed from the logits, with `log_probs`),
            or regression predictions `(K, B)`, with K snapshots in `keys(members, cycles)` order.
        """
        x = np.asarray(x, "float32")
        keys = self.keys(members, cycles)
        groups: dict[tuple, list[int]] = defaultdict(list)  # same layer shapes -> one stacked forward pass
        for i, key in enumerate(keys):
            groups[tuple(w.shape for w in self.weights[key])].append(i)
        outputs: list = [None] * len(keys)
        for rows in groups.values():
            stacked = [np.stack(ws) for ws in zip(*(self.weights[keys[i]] for i in rows), strict=True)]
            raw = self.model_class.stacked_outputs(self.model_config, stacked, x)  # (k, B, out)
            for i, out in zip(rows, raw, strict=True):
                outputs[i] = out
        task = self.model_config["task"]
        if log_probs and task != "regression":
            return outputs_to_log_probs(np.stack(outputs), task)
        return outputs_to_predictions(np.stack(outputs), task)

    def predict(
        self,
        x,
        members: Sequence[int] | None = None,
        cycles: Sequence[int] | None = None,
        method: str = "mean",
    ) -> np.ndarray:
        """Ensemble prediction of the selected snapshots: probabilities `(B, C)` combined with
        `ensemble.evaluation.metrics.combine(method=...)`, or the mean regression prediction `(B,)`."""
        member_preds = self.predict_members(x, members, cycles, log_probs=True)
        if self.model_config["task"] == "regression":
            return combine_regression(member_preds)[0]
        return combine(member_preds, method=method, log_probs=True)

    def growing_ensemble_scores(self, x, y, *, method: str) -> list[dict[str, float]]:
        """Scores of the ensemble of cycles `0..k` for each stored cycle k (ascending): `accuracy` of the members'
        probabilities combined with `method` (a name in `ensemble.evaluation.metrics.COMBINERS`, no default: pass the
        run's combiner) or, for regression, `rmse` of their mean; `count`: the snapshots in it.

        Args:
            x: features `(B, d)`.
            y: labels or targets `(B,)`.
            method: the combiner; checked for every task, used for class probabilities.
        """
        check_combiner(method)
        keys = self.keys()  # sorted by (cycle, member)
        preds = self.predict_members(x, log_probs=True)  # (K, B, C) or (K, B), in `keys` order
        scores = []
        for cycle in self.cycles:
            chosen = [i for i, (_, c) in enumerate(keys) if c <= cycle]
            if self.model_config["task"] == "regression":
                score = {"rmse": rmse(combine_regression(preds[chosen])[0], y)}
            else:
                score = {"accuracy": accuracy(combine(preds[chosen], method=method, log_probs=True), y)}
            scores.append({**score, "count": len(chosen)})
        return scores

    def member_model(self, member: int, cycle: int) -> keras.Model:
        """Snapshot (member, cycle) as a plain Keras model (the model class's `export_member`, the layout of its
        `member_model`)."""
        weights = self.weights[self.keys([member], [cycle])[0]]
        return self.model_class.export_member(
            self.model_config, weights, name=f"member_{member}_cycle_{cycle}"
        )

    def save(self, directory) -> Path:
        """Writes `snapshots.npz` (the weights) and `snapshots.json` (keys, steps, scores, model config)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.weights)
        arrays = {f"{i}_{j}": w for i, key in enumerate(keys) for j, w in enumerate(self.weights[key])}
        np.savez(directory / "snapshots.npz", **arrays)
        meta = {
            "model_class": model_class_name(self.model_class),
            "model_config": self.model_config,
            "keys": [list(key) for key in keys],
            "num_weights": [len(self.weights[key]) for key in keys],
            "steps": {str(c): s for c, s in self.steps.items()},
            "scores": [self.scores.get(key, {}) for key in keys],
        }
        (directory / "snapshots.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory) -> Snapshots:
        """Reads what `save` wrote."""
        directory = Path(directory)
        for name in ("snapshots.json", "snapshots.npz"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"Snapshot file not found: {directory / name}")
        meta = json.loads((directory / "snapshots.json").read_text())
        keys = [tuple(key) for key in meta["keys"]]
        with np.load(directory / "snapshots.npz", allow_pickle=False) as arrays:
            weights = {
                key: [arrays[f"{i}_{j}"] for j in range(count)]
                for i, (key, count) in enumerate(zip(keys, meta["num_weights"], strict=True))
            }
        scores = {key: s for key, s in zip(keys, meta["scores"], strict=True) if s}
        steps = {int(c): s for c, s in meta["steps"].items()}
        return cls(meta["model_config"], weights, steps, scores, find_model_class(meta.get("model_class")))


class SnapshotCollector(keras.callbacks.Callback):
    """Collects every member's weights at every SGDR cycle end of `ensemble.training.train.fit` into `self.snapshots`.

    `fit` calls `on_cycle_end(cycle, logs)` right after the step that ends a cycle of the optimiser's schedule
    (`SGDRSchedule.cycle_ends`), so a snapshot holds exactly the weights of that step, the last cycle included.
    Collection costs one copy of the weights per cycle (plus one validation pass when `validation_data` is given).

    Args:
        skip_first: do not keep the first `skip_first` cycles (early, poorly converged snapshots).
        keep_best: keep, per member, only the `keep_best` cycles with the best `monitor` score (None: keep all).
        validation_data: `(x_val (B, d), y_val (B,))` scored per member at each snapshot; needed by `keep_best`.
        monitor: `"val_loss"` (lower is better) or `"val_accuracy"` (higher is better).
        partial_cycle: what to do when the run does not end at a cycle end (checked before the first step):
            `"error"` raises (the unfinished cycle would yield no snapshot; also when there is no cycle at all);
            `"ignore"` checks nothing, trains, and the unfinished cycle yields no snapshot (e.g. it continues in a
            later `fit` call of a growth round).

    Attributes:
        snapshots: the `Snapshots` collected so far (None before training).
        cycle_ends: the global step counts of every cycle end seen, skipped ones included (for plots).
    """

    def __init__(
        self,
        skip_first: int = 0,
        keep_best: int | None = None,
        validation_data: tuple | None = None,
        monitor: str = "val_loss",
        partial_cycle: str = "error",
    ):
        super().__init__()
        check_int(skip_first, "skip_first", minimum=0)
        if keep_best is not None:
            check_int(keep_best, "keep_best")
        if keep_best is not None and validation_data is None:
            raise ValueError(
                "Argument `validation_data` is required when `keep_best` is set: snapshots are ranked by their "
                f"validation score. Received: keep_best={keep_best}, validation_data=None"
            )
        if monitor not in MONITORS:
            raise ValueError(
                f"Argument `monitor` must be one of {list(MONITORS)}. Received: monitor={monitor!r}"
            )
        if partial_cycle not in PARTIAL_CYCLE:
            raise ValueError(
                f"Argument `partial_cycle` must be one of {PARTIAL_CYCLE}. Received: partial_cycle={partial_cycle!r}"
            )
        self.skip_first = int(skip_first)
        self.keep_best = None if keep_best is None else int(keep_best)
        self.validation_data = validation_data
        self.monitor = monitor
        self.partial_cycle = partial_cycle
        self.snapshots: Snapshots | None = None
        self.cycle_ends: list[int] = []

    def on_train_begin(self, logs=None):
        if self.snapshots is None:
            self.snapshots = Snapshots(self.model.get_config(), model_class=type(self.model))
        if self.monitor == "val_accuracy" and self.model.task == "regression":
            raise ValueError("Argument `monitor='val_accuracy'` needs a classification task; use 'val_loss'.")
        params = self.params or {}
        total, ends = params.get("total_steps"), params.get("cycle_ends")
        if total is None or ends is None or self.partial_cycle == "ignore":  # nothing to check
            return
        if not ends:
            raise ValueError(
                "SnapshotCollector needs cycle ends: the optimizer's `learning_rate` must be a schedule with "
                "`cycle_ends(total_steps)`, e.g. `ensemble.optim.schedules.SGDRSchedule`, and the run must cover at "
                f"least one cycle (or pass `partial_cycle='ignore'`). Received: total_steps={total}, no cycle end."
            )
        if total not in ends:
            steps = params.get("steps")
            at = f" (epoch {ends[-1] / steps:g})" if steps else ""
            raise ValueError(
                f"Training ends at step {total}, inside an SGDR cycle, which would yield no snapshot (the last "
                f"cycle end is step {ends[-1]}{at}). Choose `epochs` so that training ends at a cycle end (see "
                "`SGDRSchedule.steps_for_cycles` / `check_whole_cycles`), or pass `partial_cycle='ignore'`."
            )

    def on_cycle_end(self, cycle: int, logs=None):
        step = int((logs or {})["step"])
        self.cycle_ends.append(step)
        if cycle < self.skip_first:
            return
        stacked = [
            np.array(w, copy=True) for w in self.model.get_weights()
        ]  # [W_0 (N, d, H), b_0 (N, H), ...]
        scores = None
        if self.validation_data is not None:
            evaluated = evaluate_members(self.model, *self.validation_data)
            scores = {f"val_{name}": evaluated[name] for name in ("loss", "accuracy") if name in evaluated}
        self.snapshots.add_cycle(cycle, step, stacked, scores)
        if self.keep_best is not None:
            ranked = {key: s[self.monitor] for key, s in self.snapshots.scores.items()}
            self.snapshots.keep(select_best(ranked, self.keep_best, MONITORS[self.monitor]))
