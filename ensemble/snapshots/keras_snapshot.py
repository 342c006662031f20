"""Snapshot ensembles for any `keras.Model.fit`: a drop-in for seed 002's `snapshot_ensemble` callback.

Switch by changing one import:

    from ensemble.snapshots.keras_snapshot import SnapshotEnsembleCallback

    snapshot_cb = SnapshotEnsembleCallback()          # seed 002's parameters and defaults
    model.fit(x, y, epochs=25, callbacks=[snapshot_cb])  # 25 epochs = two whole cycles (10 + 15) by default
    models = load_snapshots("Ensemble/")              # one model per cycle, in cycle order, the last one included
    probs = predict_ensemble(models, x_test)          # (B, C)

Differences from seed 002, all deliberate: the learning rate is an `SGDRSchedule` evaluated inside the compiled
train step at every step (seed 002 set it from Python before each batch); a snapshot is saved right after the last
step of EVERY cycle, the last one included (seed 002 saved at the first batch of the next cycle, so it never saved
the last cycle); files are named in cycle order (`Model-001.keras`, ...) rather than overwritten round robin; a run
that ends inside a cycle is rejected before the first step unless `partial_cycle="ignore"`; the logged and plotted
learning rates are the optimiser's own (`learning_rates`, `plot_learning_rate`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
from keras import ops

from ensemble.checks import check_int
from ensemble.evaluation.metrics import combine
from ensemble.evaluation.plots import plot_learning_rate
from ensemble.optim.schedules import SGDRSchedule

SAVE_FORMATS = {"keras": ".keras", "weights": ".weights.h5"}
PARTIAL_CYCLE = ("error", "ignore")
ENSEMBLE_OPTIONS = ("num_snapshots", "dirpath", "model_prefix")


def snapshot_path(dirpath, model_prefix: str, cycle: int, save_format: str = "keras") -> Path:
    """File of the snapshot of cycle `cycle` (0-based): `{dirpath}/{model_prefix}-{cycle + 1:03d}{extension}`."""
    return Path(dirpath) / f"{model_prefix}-{cycle + 1:03d}{SAVE_FORMATS[save_format]}"


def snapshot_files(dirpath, model_prefix: str = "Model") -> list[Path]:
    """The snapshot files in `dirpath` written with `model_prefix`, in cycle order."""
    pattern = re.compile(rf"{re.escape(model_prefix)}-(\d+)(\.keras|\.weights\.h5)$")
    found = [(int(m.group(1)), p) for p in Path(dirpath).glob("*") if (m := pattern.match(p.name))]
    return [path for _, path in sorted(found)]


@keras.saving.register_keras_serializable(package="ensemble")
class SnapshotEnsembleCallback(keras.callbacks.Callback):
    """Cosine annealing with warm restarts and a saved model at the end of every cycle, for `keras.Model.fit`.

    At the start of training the optimiser's learning rate is replaced by an `SGDRSchedule` (kept afterwards, so a
    later `fit` continues the schedule from the optimiser's step count). The train function is rebuilt so the
    schedule runs inside the compiled step.

    Args:
        cycle_length: epochs in the first cycle (seed 002's unit; may be fractional).
        cycle_length_multiplier: each cycle is this many times longer than the previous one (>= 1).
        lr_init: maximum learning rate of the first cycle.
        lr_min: minimum learning rate of the first cycle.
        lr_multiplier: factor on the whole learning-rate curve (maximum and minimum) per cycle.
        ensemble: save snapshots (False: only the learning-rate schedule).
        ensemble_options: seed 002's dict with any of `num_snapshots`, `dirpath`, `model_prefix`; its entries
            override the keyword arguments of the same name.
        num_snapshots: keep only the files of the last `num_snapshots` cycles (None: keep all).
        dirpath: directory of the snapshot files (created when the first one is saved).
        model_prefix: file name prefix; files are `{model_prefix}-{cycle:03d}.keras` with 1-based cycles.
            Snapshot files with this prefix left in `dirpath` by an earlier run are deleted when training starts.
        save_format: `"keras"` (whole model, `.keras`) or `"weights"` (`.weights.h5`; loading needs a model).
        partial_cycle: `"error"` rejects, before the first step, a `fit` that would end inside a cycle (that
            cycle would yield no snapshot); `"ignore"` trains anyway and the unfinished cycle is not saved.

    Attributes:
        schedule: the `SGDRSchedule` in use (built when training starts, from the number of steps per epoch).
        snapshot_paths: files saved so far, in cycle order.
        learning_rates, steps: the learning rate of every step and the step counts (1-based), read from the
            optimiser's schedule at the iteration counts that ran, during training (at each epoch end).
        cycle_ends: step counts at which the cycles of the run ended.
    """

    def __init__(
        self,
        cycle_length: float = 10,
        cycle_length_multiplier: float = 1.5,
        lr_init: float = 0.01,
        lr_min: float = 1e-6,
        lr_multiplier: float = 0.9,
        ensemble: bool = True,
        ensemble_options: Mapping | None = None,
        num_snapshots: int | None = 10,
        dirpath: str = "Ensemble/",
        model_prefix: str = "Model",
        save_format: str = "keras",
        partial_cycle: str = "error",
    ):
        super().__init__()
        options = dict(ensemble_options or {})
        if unknown := sorted(set(options) - set(ENSEMBLE_OPTIONS)):
            raise ValueError(
                f"Argument `ensemble_options` accepts keys {list(ENSEMBLE_OPTIONS)}. Received unknown keys: {unknown}"
            )
        num_snapshots = options.get("num_snapshots", num_snapshots)
        dirpath = options.get("dirpath", dirpath)
        model_prefix = options.get("model_prefix", model_prefix)
        if num_snapshots is not None:
            check_int(num_snapshots, "num_snapshots")
        if save_format not in SAVE_FORMATS:
            raise ValueError(
                f"Argument `save_format` must be one of {list(SAVE_FORMATS)}. Received: save_format={save_format!r}"
            )
        if partial_cycle not in PARTIAL_CYCLE:
            raise ValueError(
                f"Argument `partial_cycle` must be one of {PARTIAL_CYCLE}. Received: partial_cycle={partial_cycle!r}"
            )
        if not model_prefix or "/" in model_prefix:
            raise ValueError(f"Argument `model_prefix` must be a plain file name. Received: {model_prefix!r}")
        # The schedule validates its own arguments (same names); its cycle length in steps is known at fit time.
        SGDRSchedule(1, cycle_length_multiplier, lr_init, lr_min, lr_multiplier)
        if not cycle_length > 0:
            raise ValueError(
                f"Argument `cycle_length` must be > 0 (epochs). Received: cycle_length={cycle_length}"
            )
        self.cycle_length = cycle_length
        self.cycle_length_multiplier = cycle_length_multiplier
        self.lr_init = lr_init
        self.lr_min = lr_min
        self.lr_multiplier = lr_multiplier
        self.ensemble = bool(ensemble)
        self.num_snapshots = None if num_snapshots is None else int(num_snapshots)
        self.dirpath = str(dirpath)
        self.model_prefix = model_prefix
        self.save_format = save_format
        self.partial_cycle = partial_cycle
        self.schedule: SGDRSchedule | None = None
        self.snapshot_paths: list[Path] = []
        self.learning_rates: list[float] = []
        self.steps: list[int] = []
        self.cycle_ends: list[int] = []
        self._pending: list[int] = []  # cycle ends still to come in this fit
        self._epoch_start = None

    # ------------------------------------------------------------------------------------------------------------
    # Training hooks
    # ------------------------------------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer is None:
            raise ValueError(
                "SnapshotEnsembleCallback needs a compiled model (`model.compile(optimizer=...)`)."
            )
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "SnapshotEnsembleCallback needs the number of steps per epoch (cycles are given in epochs): use "
                "data of known length or pass `steps_per_epoch` to `fit`."
            )
        self.schedule = SGDRSchedule.from_epochs(
            self.cycle_length,
            steps,
            cycle_length_multiplier=self.cycle_length_multiplier,
            lr_init=self.lr_init,
            lr_min=self.lr_min,
            lr_multiplier=self.lr_multiplier,
        )
        optimizer.learning_rate = self.schedule
        self.model.make_train_function(force=True)  # trace again: the schedule runs inside the compiled step
        self._epoch_start = None
        if self.ensemble and not self.snapshot_paths:
            for stale in snapshot_files(self.dirpath, self.model_prefix):
                stale.unlink()

    def on_epoch_begin(self, epoch, logs=None):
        iterations = int(self.model.optimizer.iterations)
        if self._epoch_start is None:  # first epoch of this fit: plan (and check) the cycle ends
            steps, epochs = self.params["steps"], self.params["epochs"]
            total = iterations + (epochs - epoch) * steps
            self._pending = [end for end in self.schedule.cycle_ends(total) if end > iterations]
            if self.ensemble and self.partial_cycle == "error":
                self.schedule.check_whole_cycles(total, steps)
            self._check_reachable(iterations, steps)
        self._epoch_start = iterations

    def on_train_batch_end(self, batch, logs=None):
        if not self._pending:
            return
        done = self._epoch_start + batch + 1  # steps done (counting from the optimiser's iterations)
        if done >= self._pending[0]:
            end = self._pending.pop(0)
            self.cycle_ends.append(end)
            if self.ensemble:
                self._save(len(self.schedule.cycle_ends(end)) - 1)

    def on_epoch_end(self, epoch, logs=None):
        iterations = int(self.model.optimizer.iterations)
        ran = np.arange(self._epoch_start, iterations)
        if ran.size:  # the optimiser's schedule at each iteration count this epoch ran
            self.learning_rates.extend(np.asarray(self.schedule(ran)).tolist())
            self.steps.extend((ran + 1).tolist())

    # ------------------------------------------------------------------------------------------------------------

    def _check_reachable(self, start: int, steps: int) -> None:
        """Cycle ends must fall where a batch callback fires (at most every `steps_per_execution` steps)."""
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if per_call == 1:
            return

        def reachable(end: int) -> bool:  # a batch-end callback fires after this many steps of the epoch
            in_epoch = (end - start - 1) % steps + 1
            return in_epoch % per_call == 0 or in_epoch == steps

        if missed := [end for end in self._pending if not reachable(end)]:
            raise ValueError(
                f"With steps_per_execution={per_call}, Keras calls back only every {per_call} steps, so the cycle "
                f"ends at steps {missed[:5]} cannot be snapshotted exactly. Use cycle lengths that are multiples of "
                "`steps_per_execution` (in steps) or compile with `steps_per_execution=1`."
            )

    def _save(self, cycle: int) -> None:
        path = snapshot_path(self.dirpath, self.model_prefix, cycle, self.save_format)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.save_format == "keras":
            self.model.save(path)
        else:
            self.model.save_weights(path)
        self.snapshot_paths.append(path)
        if self.num_snapshots is not None and len(self.snapshot_paths) > self.num_snapshots:
            self.snapshot_paths.pop(0).unlink(missing_ok=True)

    def plot_learning_rate(self, path) -> Path:
        """PNG of the learning rate of every step as used, with the cycle ends marked."""
        return plot_learning_rate(self.steps, self.learning_rates, self.cycle_ends, path)

    def get_config(self) -> dict:
        return {
            "cycle_length": self.cycle_length,
            "cycle_length_multiplier": self.cycle_length_multiplier,
            "lr_init": self.lr_init,
            "lr_min": self.lr_min,
            "lr_multiplier": self.lr_multiplier,
            "ensemble": self.ensemble,
            "ensemble_options": None,
            "num_snapshots": self.num_snapshots,
            "dirpath": self.dirpath,
            "model_prefix": self.model_prefix,
            "save_format": self.save_format,
            "partial_cycle": self.partial_cycle,
        }

    @classmethod
    def from_config(cls, config: dict) -> SnapshotEnsembleCallback:
        return cls(**config)


def load_snapshots(
    dirpath="Ensemble/",
    model_prefix: str = "Model",
    model: keras.Model | None = None,
    custom_objects: dict | None = None,
) -> list[keras.Model]:
    """The snapshot models saved by `SnapshotEnsembleCallback`, in cycle order.

    Args:
        dirpath, model_prefix: as given to the callback.
        model: a model of the same architecture, needed for `.weights.h5` snapshots (each is loaded into a clone).
        custom_objects: passed to `keras.saving.load_model` for `.keras` snapshots.
    """
    files = snapshot_files(dirpath, model_prefix)
    if not files:
        raise FileNotFoundError(
            f"No snapshot files `{model_prefix}-NNN.keras|.weights.h5` in {Path(dirpath)}."
        )
    models = []
    for path in files:
        if path.name.endswith(".keras"):
            models.append(keras.saving.load_model(path, custom_objects=custom_objects))
            continue
        if model is None:
            raise ValueError(f"Argument `model` (same architecture) is required to load weights file {path}.")
        clone = keras.models.clone_model(model)
        clone.load_weights(path)
        models.append(clone)
    return models


def predict_ensemble(
    models: Sequence[keras.Model], x, method: str = "mean", batch_size: int = 1024
) -> np.ndarray:
    """Ensemble prediction of snapshot models.

    Args:
        models: the snapshot models (e.g. `load_snapshots(...)`, or its last K).
        x: inputs accepted by every model, batch `B`.
        method: a combiner of `ensemble.evaluation.metrics.COMBINERS` (`"mean"`, `"geometric"`) for probability outputs
            `(B, C)` with C >= 2; other outputs (a sigmoid `(B, 1)`, regression) are averaged (`"mean"` only).

    Returns:
        Combined probabilities `(B, C)`, or the mean output.
    """
    if not models:
        raise ValueError("Argument `models` must hold at least one model. Received: models=[]")
    x = np.asarray(x)
    # model(x) in eager batches: unlike `predict`, it traces no function per snapshot model
    outputs = np.stack(
        [
            np.concatenate(
                [
                    ops.convert_to_numpy(m(x[i : i + batch_size], training=False))
                    for i in range(0, len(x), batch_size)
                ]
            )
            for m in models
        ]
    )  # (K, B, C)
    if outputs.ndim == 3 and outputs.shape[-1] >= 2:
        return combine(outputs, method=method)
    if method != "mean":
        raise ValueError(
            f"Argument `method={method!r}` needs probability outputs (B, C>=2); got outputs {outputs.shape[1:]}. "
            "Use method='mean'."
        )
    return outputs.mean(axis=0)
