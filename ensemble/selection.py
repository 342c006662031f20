"""Ensemble selection: greedy forward selection with replacement from a library of models (Caruana et al., 2004).

Start from the empty ensemble; at each round add the model (any, again if it helps: "with replacement") whose
addition gives the best validation score of the combined ensemble; after `rounds` rounds keep the prefix that
scored best. A model chosen c times gets weight c / (models chosen), so the result is a weighted ensemble of the
library (`ensemble.predictor.EnsemblePredictor(weights=...)`). Selecting with replacement lets good models gain
weight and keeps the score from getting worse as rounds go on (Caruana et al.'s "selection with replacement").

Scores (lower is better): `"nll"`, `"brier"`, `"error"` (1 - accuracy) of the combined probabilities, `"rmse"` of the
combined regression mean. Member predictions: log-probabilities `(K, B, C)` or regression predictions `(K, B)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ensemble.uncertainty import weighted_log_combine

METRICS = ("nll", "accuracy", "brier", "rmse")
CLASSIFICATION_METRICS = ("nll", "accuracy", "brier")


def check_metric(metric: str, task: str) -> str:
    """`metric` for a task: regression scores only `rmse` (its members have no likelihood of their own)."""
    if metric not in METRICS:
        raise ValueError(f"Argument `metric` must be one of {METRICS}. Received: metric={metric!r}")
    if task == "regression":
        return "rmse"
    if metric == "rmse":
        raise ValueError(
            "Argument `metric='rmse'` is a regression metric; use nll, accuracy or brier for classes."
        )
    return metric


def ensemble_loss(
    member_preds: np.ndarray, weights, y: np.ndarray, metric: str, combiner: str = "mean"
) -> float:
    """The score (lower is better) of the `weights`-combined members on `(member_preds, y)`; accuracy as error."""
    if metric == "rmse":
        w = np.asarray(weights, "float64") / np.sum(weights)
        mean = np.tensordot(w, member_preds, axes=1)  # (B,)
        return float(np.sqrt(np.mean((mean - y) ** 2)))
    return float(candidate_losses(weighted_log_combine(member_preds, weights, combiner)[None], y, metric)[0])


def candidate_losses(log_probs: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Scores of K candidate ensembles' log-probabilities `(K, B, C)` -> `(K,)` (lower is better)."""
    rows = np.arange(log_probs.shape[1])
    if metric == "nll":
        return -log_probs[:, rows, y].mean(axis=1)
    if metric == "accuracy":
        return 1.0 - (log_probs.argmax(axis=-1) == y[None]).mean(axis=1)
    onehot = np.eye(log_probs.shape[-1])[y]  # (B, C)
    return ((np.exp(log_probs) - onehot[None]) ** 2).sum(axis=-1).mean(axis=1)


@dataclass(frozen=True)
class Selection:
    """The result of `greedy_selection`.

    Attributes:
        counts: times each library model was chosen `(K,)` (its weight is `counts / counts.sum()`).
        curve: the validation score after each round `(rounds,)` (lower is better; accuracy as error).
        best_round: the round (0-based) whose ensemble was kept: `counts` sums to `best_round + 1`.
        metric: the selection metric.
    """

    counts: list[int]
    curve: list[float]
    best_round: int
    metric: str
    order: list[int] = field(default_factory=list)  # the model added at each round, kept prefix first

    @property
    def weights(self) -> np.ndarray:
        counts = np.asarray(self.counts, "float64")
        return counts / counts.sum()

    def get_config(self) -> dict:
        return asdict(self)


def greedy_selection(
    member_preds: np.ndarray,
    y: np.ndarray,
    metric: str = "nll",
    rounds: int | None = None,
    combiner: str = "mean",
) -> Selection:
    """Caruana et al.'s forward selection with replacement on validation predictions.

    Args:
        member_preds: the library's validation predictions: log-probabilities `(K, B, C)`, or `(K, B)` for
            regression (then `metric` must be "rmse").
        y: validation labels / targets `(B,)`.
        metric: "nll" (default), "accuracy", "brier" or "rmse".
        rounds: models added in all (None: `max(2 K, 20)`); the best-scoring prefix is kept.
        combiner: how probabilities combine ("mean" or "geometric"), as the predictor will combine them.

    Returns:
        A `Selection`; ties go to the lower index, so the result is deterministic.
    """
    preds = np.asarray(member_preds, dtype="float64")
    regression = preds.ndim == 2
    if (metric == "rmse") != regression or metric not in METRICS:
        raise ValueError(
            f"Argument `metric` must be 'rmse' for regression predictions (K, B) and one of "
            f"{CLASSIFICATION_METRICS} for log-probabilities (K, B, C). Received: metric={metric!r}, "
            f"shape={preds.shape}"
        )
    if preds.shape[0] < 1 or preds.shape[1] != len(y):
        raise ValueError(f"Expected (K >= 1, B={len(y)}, ...) predictions. Received: shape={preds.shape}")
    rounds = max(2 * preds.shape[0], 20) if rounds is None else int(rounds)
    if rounds < 1:
        raise ValueError(f"Argument `rounds` must be >= 1. Received: rounds={rounds}")
    y = np.asarray(y)
    counts, order, curve = np.zeros(preds.shape[0], "int64"), [], []
    running = None  # the chosen models' sum: regression predictions (B,), or the combiner's (B, C) state
    for _ in range(rounds):
        losses = candidate_scores(preds, running, len(order), y, metric, combiner)  # (K,)
        best = int(np.argmin(losses))
        if running is None:
            running = preds[best]
        elif regression or combiner == "geometric":
            running = running + preds[best]
        else:
            running = np.logaddexp(running, preds[best])
        counts[best] += 1
        order.append(best)
        curve.append(float(losses[best]))
    best_round = int(np.argmin(curve))
    kept = np.bincount(order[: best_round + 1], minlength=preds.shape[0])
    return Selection(kept.tolist(), curve, best_round, metric, order)


def candidate_scores(preds, running, chosen: int, y, metric: str, combiner: str) -> np.ndarray:
    """The score of the current ensemble (`chosen` models, summed in `running`) plus each model `(K,)`."""
    if preds.ndim == 2:  # regression: running = sum of chosen predictions (B,)
        total = preds if running is None else preds + running[None]
        return np.sqrt((((total / (chosen + 1)) - y[None]) ** 2).mean(axis=1))
    if combiner == "geometric":  # running = sum of chosen log-probabilities (B, C)
        mixed = (preds if running is None else preds + running[None]) / (chosen + 1)
        mixed = mixed - mixed.max(axis=-1, keepdims=True)
        log_probs = mixed - np.log(np.exp(mixed).sum(axis=-1, keepdims=True))
    else:  # running = log of the chosen probabilities' sum (B, C)
        total = preds if running is None else np.logaddexp(preds, running[None])
        log_probs = total - np.log(chosen + 1)
    return candidate_losses(log_probs, y, metric)


@dataclass(frozen=True)
class BaggedSelection:
    """The result of `bagged_selection`.

    Attributes:
        weights: the average over bags of each bag's selection weights `(K,)` (sums to 1).
        curve: the validation score of the average of bags `0..b`, per bag `(bags,)` (lower is better).
        metric: the selection metric.
    """

    weights: list[float]
    curve: list[float]
    metric: str

    def get_config(self) -> dict:
        return asdict(self)


def bagged_selection(
    member_preds: np.ndarray,
    y: np.ndarray,
    metric: str = "nll",
    bags: int = 20,
    fraction: float = 0.5,
    seed: int = 0,
    rounds: int | None = None,
    combiner: str = "mean",
) -> BaggedSelection:
    """Caruana et al.'s bagged ensemble selection: `greedy_selection` on `bags` random subsets of the library (each
    holds `fraction` of the models, drawn without replacement), the resulting ensembles averaged.

    A small validation split overfits plain greedy selection (it keeps few models that happen to fit those rows);
    averaging over bags spreads the weight over models that are good on many subsets. Arguments as
    `greedy_selection`; `seed` draws the subsets.
    """
    preds = np.asarray(member_preds, dtype="float64")
    if int(bags) < 1 or not 0 < fraction <= 1:
        raise ValueError(f"Need bags >= 1 and 0 < fraction <= 1. Received: bags={bags}, fraction={fraction}")
    rng, models = np.random.default_rng(seed), preds.shape[0]
    size = max(1, round(models * fraction))
    total, curve = np.zeros(models), []
    for _ in range(int(bags)):
        subset = np.sort(rng.choice(models, size, replace=False))
        chosen = greedy_selection(preds[subset], y, metric, rounds, combiner)
        total[subset] += chosen.weights
        curve.append(ensemble_loss(preds, total, y, metric, combiner))
    return BaggedSelection((total / bags).tolist(), curve, metric)
