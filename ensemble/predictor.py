"""The deployable ensemble: the training-time preprocessing + member networks + combiner; raw rows in, answers out.

A predictor holds one or more member-model groups (`ensemble.model.member_model`, e.g. `FusedMLP`s; a group per
architecture: e.g. the final members, or snapshots taken before and after a growth round) whose members are all
pooled into one ensemble. Member predictions are concatenated along the member axis and combined with
`ensemble.evaluation.metrics.combine`, or with a weight per member (an ensemble selection, `ensemble.evaluation.selection`). Every
answer carries its uncertainty (`ensemble.uncertainty`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.data import DataError, Preprocessor
from ensemble.evaluation.metrics import COMBINERS, combine, combine_regression
from ensemble.model.member_model import MemberModel, load_member_model
from ensemble.uncertainty import (
    check_weights,
    classification_uncertainty,
    conformal_quantile,
    prediction_interval,
    weighted_log_combine,
    weighted_mean_and_spread,
)

PREDICTOR_FILE = "predictor.json"


class EnsemblePredictor:
    """Raw feature columns in; class probabilities, labels and their uncertainty (or mean, spread and a prediction
    interval) out.

    Args:
        preprocessor: the fitted transform of training (column order, standardisation, label encoding).
        groups: fused models whose members together form the ensemble; all take `preprocessor`'s features.
        combiner: `"mean"` (arithmetic mean of probabilities) or `"geometric"` (normalised geometric mean).
        weights: one weight >= 0 per pooled member `(K,)` (normalised to sum 1; e.g. an ensemble selection's), or
            None for equal weights.
        interval_half_width: regression: the half-width of the prediction interval (`calibrate_interval`); None:
            `mean -/+ z spread` (members' spread only).
        interval_level: the interval's coverage level.
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        groups: Sequence[MemberModel],
        combiner: str = "mean",
        weights: Sequence[float] | None = None,
        interval_half_width: float | None = None,
        interval_level: float = 0.9,
    ):
        if not groups:
            raise ValueError("Argument `groups` must hold at least one FusedMLP. Received an empty sequence.")
        if combiner not in COMBINERS:
            raise ValueError(
                f"Argument `combiner` must be one of {COMBINERS}. Received: combiner={combiner!r}"
            )
        for group in groups:
            if group.input_dim != len(preprocessor.feature_names) or group.task != preprocessor.task:
                raise ValueError(
                    f"Group {group.name!r} ({group.task}, {group.input_dim} inputs) does not match the "
                    f"preprocessor ({preprocessor.task}, {len(preprocessor.feature_names)} features)."
                )
        if not 0 < interval_level < 1:
            raise ValueError(f"Argument `interval_level` must be in (0, 1). Received: {interval_level}")
        self.preprocessor = preprocessor
        self.groups = list(groups)
        self.combiner = combiner
        self.weights = None if weights is None else check_weights(weights, self.num_members).tolist()
        self.interval_half_width = None if interval_half_width is None else float(interval_half_width)
        self.interval_level = float(interval_level)

    @property
    def num_members(self) -> int:
        return sum(group.members for group in self.groups)

    def predict_members(self, frame: pd.DataFrame, log_probs: bool = False) -> np.ndarray:
        """Member predictions for raw rows: `(K, B, C)` probabilities (their logs, computed from the logits, with
        `log_probs`), or `(K, B)` for regression. DataError for a frame without rows (an empty request)."""
        if isinstance(frame, pd.DataFrame) and len(frame) == 0:
            raise DataError(
                f"No rows to predict: send at least one row with the feature columns {self.preprocessor.feature_names}."
            )
        x = self.preprocessor.transform(frame)  # (B, d), validated and standardised
        return self.pooled_members(x, log_probs=log_probs)

    def pooled_members(self, x: np.ndarray, log_probs: bool = False) -> np.ndarray:
        """Every group's member predictions of standardised features `(B, d)` (as `PreparedData.x_test`), pooled
        along the member axis: `(K, B, C)` probabilities (their logs with `log_probs`), or `(K, B)` for regression."""
        return np.concatenate(
            [group.predict_members(x, log_probs=log_probs) for group in self.groups], axis=0
        )

    def combine_members(self, members: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ensemble's answer from member predictions: probabilities `(B, C)` of log-probabilities `(K, B, C)`, or
        `(mean, spread)` `(B,)` of regression predictions `(K, B)`; with `weights` when set."""
        if self.preprocessor.task == "regression":
            if self.weights is None:
                return combine_regression(members)
            return weighted_mean_and_spread(members, self.weights)
        if self.weights is None:
            return combine(members, method=self.combiner, log_probs=True)
        return np.exp(weighted_log_combine(members, self.weights, self.combiner))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per input row.

        Classification: columns `proba_<class>` for every class, `label` (the original label value) and the
        uncertainty columns `predictive_entropy`, `mean_member_entropy`, `mutual_information`, `disagreement`
        (`ensemble.uncertainty`). Regression: `prediction` (member mean), `spread` (member standard deviation) and
        the prediction interval `lower`, `upper` (`interval_level`).
        The preprocessor's `id_column`, when `frame` has it, comes first, as given.
        """
        members = self.predict_members(frame, log_probs=True)
        if self.preprocessor.task == "regression":
            mean, spread = self.combine_members(members)
            lower, upper = prediction_interval(mean, spread, self.interval_half_width, self.interval_level)
            result = pd.DataFrame(
                {"prediction": mean, "spread": spread, "lower": lower, "upper": upper}, index=frame.index
            )
        else:
            probs = self.combine_members(members)  # (B, C)
            columns = {f"proba_{c}": probs[:, i] for i, c in enumerate(self.preprocessor.classes)}
            result = pd.DataFrame(columns, index=frame.index)
            label = probs.argmax(axis=1)
            result["label"] = self.preprocessor.decode_labels(label)
            for name, values in classification_uncertainty(members, self.weights, label).items():
                result[name] = values
        if (id_column := self.preprocessor.id_column) is not None and id_column in frame.columns:
            result.insert(0, id_column, frame[id_column])
        return result

    def calibrate_interval(self, x: np.ndarray, y: np.ndarray) -> float:
        """Regression: set the prediction interval's half-width to the split-conformal quantile
        (`interval_level`) of the ensemble's absolute residuals on held-out rows: standardised features `(B, d)`
        (as `PreparedData.x_val`) and targets `(B,)`. Returns the half-width."""
        if self.preprocessor.task != "regression":
            raise ValueError(
                "calibrate_interval is for regression; classification answers carry no interval."
            )
        mean, _ = self.combine_members(self.pooled_members(x))  # members (K, B)
        self.interval_half_width = conformal_quantile(mean, y, self.interval_level)
        return self.interval_half_width

    def save(self, directory: str | Path) -> Path:
        """Write `predictor.json` and one `group_<i>.keras` per group into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for i, group in enumerate(self.groups):
            group.save(directory / f"group_{i}.keras")
        meta = {
            "preprocessor": self.preprocessor.to_dict(),
            "combiner": self.combiner,
            "groups": len(self.groups),
            "weights": self.weights,
            "interval_half_width": self.interval_half_width,
            "interval_level": self.interval_level,
        }
        (directory / PREDICTOR_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EnsemblePredictor:
        directory = Path(directory)
        path = directory / PREDICTOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No saved predictor in {directory}: {PREDICTOR_FILE} is missing.")
        meta = json.loads(path.read_text())
        groups = [load_member_model(directory / f"group_{i}.keras") for i in range(meta["groups"])]
        return cls(
            Preprocessor.from_dict(meta["preprocessor"]),
            groups,
            meta["combiner"],
            weights=meta.get("weights"),  # predictors saved before weights and intervals load as they were
            interval_half_width=meta.get("interval_half_width"),
            interval_level=meta.get("interval_level", 0.9),
        )


def stack_weight_sets(
    template: MemberModel, weight_sets: Sequence[Sequence[np.ndarray]], name: str
) -> MemberModel:
    """A model of `template`'s class whose members are the given member weight sets (e.g. snapshots), all of one
    shape.

    Args:
        template: gives the architecture (inputs, task, activation); the shapes come from `weight_sets`.
        weight_sets: one entry per new member, each in `member_weights` order.
        name: the new model's name.
    """
    stacked = [np.stack([ws[i] for ws in weight_sets]) for i in range(len(weight_sets[0]))]
    cls = type(template)
    return cls.from_weights({**cls.stacked_config(template.get_config(), stacked), "name": name}, stacked)
