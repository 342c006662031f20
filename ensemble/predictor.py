"""The deployable ensemble: the training-time preprocessing + member networks + combiner; raw rows in, answers out.

A predictor holds one or more `FusedMLP` groups (a group per architecture: e.g. the final members, or snapshots
taken before and after a growth round) whose members are all pooled into one ensemble. Member predictions are
concatenated along the member axis and combined with `ensemble.metrics.combine`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.data import DataError, Preprocessor
from ensemble.fused import FusedMLP, load_fused
from ensemble.metrics import COMBINERS, combine, combine_regression

PREDICTOR_FILE = "predictor.json"


class EnsemblePredictor:
    """Raw feature columns in; class probabilities and labels (or mean and spread) out.

    Args:
        preprocessor: the fitted transform of training (column order, standardisation, label encoding).
        groups: fused models whose members together form the ensemble; all take `preprocessor`'s features.
        combiner: `"mean"` (arithmetic mean of probabilities) or `"geometric"` (normalised geometric mean).
    """

    def __init__(self, preprocessor: Preprocessor, groups: Sequence[FusedMLP], combiner: str = "mean"):
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
        self.preprocessor = preprocessor
        self.groups = list(groups)
        self.combiner = combiner

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
        return np.concatenate([group.predict_members(x, log_probs=log_probs) for group in self.groups], axis=0)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per input row.

        Classification: columns `proba_<class>` for every class and `label` (the original label value).
        Regression: `prediction` (member mean) and `spread` (member standard deviation).
        The preprocessor's `id_column`, when `frame` has it, comes first, as given.
        """
        members = self.predict_members(frame, log_probs=True)
        if self.preprocessor.task == "regression":
            mean, spread = combine_regression(members)
            result = pd.DataFrame({"prediction": mean, "spread": spread}, index=frame.index)
        else:
            probs = combine(members, method=self.combiner, log_probs=True)  # (B, C)
            columns = {f"proba_{c}": probs[:, i] for i, c in enumerate(self.preprocessor.classes)}
            result = pd.DataFrame(columns, index=frame.index)
            result["label"] = self.preprocessor.decode_labels(probs.argmax(axis=1))
        if (id_column := self.preprocessor.id_column) is not None and id_column in frame.columns:
            result.insert(0, id_column, frame[id_column])
        return result

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
        groups = [load_fused(directory / f"group_{i}.keras") for i in range(meta["groups"])]
        return cls(Preprocessor.from_dict(meta["preprocessor"]), groups, meta["combiner"])


def stack_weight_sets(template: FusedMLP, weight_sets: Sequence[Sequence[np.ndarray]], name: str) -> FusedMLP:
    """A fused model whose members are the given member weight sets (e.g. snapshots), all of `template`'s shape.

    Args:
        template: gives the architecture (inputs, hidden widths, task, activation).
        weight_sets: one entry per new member, each in `FusedMLP.member_weights` order.
        name: the new model's name.
    """
    config = {**template.get_config(), "members": len(weight_sets), "member_seeds": None, "name": name}
    stacked = [np.stack([ws[i] for ws in weight_sets]) for i in range(len(weight_sets[0]))]
    return FusedMLP.from_weights(config, stacked)
