"""Per-row uncertainty of an ensemble's answer, from its members' predictions.

Classification (member log-probabilities `(K, B, C)`, optional member weights `(K,)` summing to 1; logs in nats):

- `predictive_entropy`  H[p_bar], the entropy of the weighted mean of the members' probabilities: total uncertainty;
- `mean_member_entropy`  sum_k w_k H[p_k], the members' (weighted) mean entropy: what each member itself is unsure of
  (aleatoric);
- `mutual_information`  their difference (>= 0): how much the members disagree about the distribution (epistemic);
- `disagreement`  the weight of the members whose top class is not the ensemble's label.

Regression (member predictions `(K, B)`): the weighted `mean`, the members' standard deviation `spread`, and a
prediction interval `[mean - q, mean + q]` whose half-width `q` is the split-conformal quantile of the absolute
residuals `|y - mean|` on held-out rows (`conformal_quantile`): at level 0.9 it covers >= 90 % of new rows drawn like
them (Vovk et al.; Lei et al. 2018). Without that calibration, `mean -/+ z spread` (a normal interval of the members'
spread alone, which leaves the noise out and is too narrow).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ensemble.evaluation.metrics import LOG_COMBINERS, check_combiner

UNCERTAINTY_COLUMNS = ("predictive_entropy", "mean_member_entropy", "mutual_information", "disagreement")


def check_weights(weights, members: int) -> np.ndarray:
    """`weights (K,)` >= 0, not all 0, normalised to sum 1 (None: uniform)."""
    if weights is None:
        return np.full(members, 1.0 / members)
    weights = np.asarray(weights, dtype="float64")
    if (
        weights.shape != (members,)
        or not np.all(np.isfinite(weights))
        or (weights < 0).any()
        or weights.sum() <= 0
    ):
        raise ValueError(
            f"Argument `weights` must hold {members} finite non-negative member weights, not all 0. "
            f"Received: {weights.tolist()}"
        )
    return weights / weights.sum()


def weighted_log_combine(log_probs: np.ndarray, weights, method: str = "mean") -> np.ndarray:
    """Ensemble log-probabilities `(B, C)` of member log-probabilities `(K, B, C)` with weights `(K,)`.

    `"mean"`: log sum_k w_k p_k; `"geometric"`: the normalised sum_k w_k log p_k (`ensemble.evaluation.metrics.LOG_COMBINERS`,
    the combiners of `ensemble.evaluation.metrics.combine`, given the weights).
    """
    check_combiner(method, "method")
    log_probs = np.asarray(log_probs, dtype="float64")
    w = check_weights(weights, log_probs.shape[0])
    used = w > 0  # a zero-weight member contributes nothing (not even -inf * 0)
    return LOG_COMBINERS[method](log_probs[used], w[used])


def entropy(log_probs: np.ndarray) -> np.ndarray:
    """`-sum_c p_c log p_c` over the last axis, 0 log 0 = 0: `(..., C)` -> `(...)`."""
    probs = np.exp(log_probs)
    return -np.where(probs > 0, probs * log_probs, 0.0).sum(axis=-1)


def classification_uncertainty(log_probs: np.ndarray, weights=None, label: np.ndarray | None = None) -> dict:
    """The four per-row measures (`UNCERTAINTY_COLUMNS`) of member log-probabilities `(K, B, C)`, each `(B,)`.

    Args:
        weights: member weights `(K,)` (None: uniform).
        label: the ensemble's class per row `(B,)`, for `disagreement` (None: the argmax of the weighted mean).
    """
    log_probs = np.asarray(log_probs, dtype="float64")
    w = check_weights(weights, log_probs.shape[0])
    mean = weighted_log_combine(log_probs, w, "mean")  # (B, C)
    total = entropy(mean)  # (B,)
    members = (w[:, None] * entropy(log_probs)).sum(axis=0)  # (B,)
    label = mean.argmax(axis=-1) if label is None else np.asarray(label)
    votes = log_probs.argmax(axis=-1)  # (K, B)
    return {
        "predictive_entropy": total,
        "mean_member_entropy": members,
        "mutual_information": np.maximum(
            total - members, 0.0
        ),  # >= 0 (Jensen); the max drops rounding below 0
        "disagreement": (w[:, None] * (votes != label[None])).sum(axis=0),
    }


def weighted_mean_and_spread(preds: np.ndarray, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Regression: the weighted member mean and standard deviation `(B,)` of predictions `(K, B)`."""
    preds = np.asarray(preds, dtype="float64")
    w = check_weights(weights, preds.shape[0])[:, None]  # (K, 1)
    mean = (w * preds).sum(axis=0)
    return mean, np.sqrt((w * (preds - mean) ** 2).sum(axis=0))


def conformal_quantile(mean: np.ndarray, y: np.ndarray, level: float = 0.9) -> float:
    """Split-conformal half-width: the `ceil((n + 1) level) / n` empirical quantile of `|y - mean|` over n held-out
    rows (the largest residual when n is too small for `level`)."""
    if not 0 < level < 1:
        raise ValueError(f"Argument `level` must be in (0, 1). Received: level={level}")
    residuals = np.sort(np.abs(np.asarray(y, "float64") - np.asarray(mean, "float64")))
    if residuals.size == 0:
        raise ValueError("conformal_quantile needs at least one held-out row.")
    rank = min(math.ceil((residuals.size + 1) * level), residuals.size)
    return float(residuals[rank - 1])


def prediction_interval(
    mean: np.ndarray, spread: np.ndarray, half_width: float | None, level: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """`(lower, upper)` `(B,)`: `mean -/+ half_width` (conformal), or `mean -/+ z spread` when it is None."""
    if half_width is None:
        half = NormalDist().inv_cdf(0.5 + level / 2) * np.asarray(spread)
    else:
        half = np.full(np.shape(mean), float(half_width))
    return mean - half, mean + half
