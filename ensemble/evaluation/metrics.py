"""Ensemble combiners and evaluation metrics on member predictions (NumPy; the combiners also run in a compiled
TensorFlow function, see `LOG_COMBINERS`).

Every metric derives from one array of member outputs:

- classification: probabilities `member_probs` of shape `(N, B, C)` = members, batch, classes (a binary task uses
  `C=2`, i.e. `[1 - p, p]`), labels `y` of shape `(B,)` with integers in `0..C-1`. With `log_probs=True` the same
  argument holds log-probabilities instead (`FusedMLP.predict_members(x, log_probs=True)`: log-softmax /
  log-sigmoid of the logits), and the geometric mean and the NLL are exact even where a probability underflows;
  from probabilities they are exact for the probabilities given. Nothing is floored: a true class of probability
  0 costs an infinite NLL;
- regression: predicted means `member_preds` of shape `(N, B)` or `(N, B, 1)`, targets `y` of shape `(B,)`.

The combiners follow Kondratyuk et al. (2020), "When Ensembling Smaller Models is More Efficient than Single Large
Models": the arithmetic mean of the members' softmax outputs, or their renormalised geometric mean.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ensemble.checks import check_int

_SUM_TOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _check_probs(probs, name: str, ndim: int) -> np.ndarray:
    """Returns `probs` as a float array after checking its rank, emptiness, range and row sums."""
    probs = np.asarray(probs, dtype=np.float64)
    axes = "(N, B, C)" if ndim == 3 else "(B, C)"
    if probs.ndim != ndim:
        raise ValueError(
            f"Argument `{name}` must be a {ndim}-D array of probabilities with shape {axes}. "
            f"Received: {name}.shape={probs.shape}"
        )
    if 0 in probs.shape:
        raise ValueError(
            f"Argument `{name}` must have no empty axis {axes}. Received: {name}.shape={probs.shape}"
        )
    if probs.shape[-1] < 2:
        raise ValueError(
            f"Argument `{name}` must have C >= 2 classes (use [1 - p, p] for a binary task). "
            f"Received: {name}.shape={probs.shape}"
        )
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0 + _SUM_TOL:
        raise ValueError(
            f"Argument `{name}` must hold finite probabilities in [0, 1]. "
            f"Received: min={probs.min()!r}, max={probs.max()!r}"
        )
    worst = float(np.max(np.abs(probs.sum(axis=-1) - 1.0)))
    if worst > _SUM_TOL:
        raise ValueError(
            f"Argument `{name}` must have rows summing to 1 (within {_SUM_TOL}); pass softmax outputs, not logits. "
            f"Received: largest |row sum - 1|={worst:.4g}"
        )
    return probs


def _check_log_probs(log_probs, name: str, ndim: int) -> np.ndarray:
    """Returns `log_probs` as a float array after checking its rank, emptiness, range and row log-sums."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    axes = "(N, B, C)" if ndim == 3 else "(B, C)"
    if log_probs.ndim != ndim or 0 in log_probs.shape or log_probs.shape[-1] < 2:
        raise ValueError(
            f"Argument `{name}` must be a {ndim}-D array of log-probabilities with shape {axes}, no empty axis "
            f"and C >= 2. Received: {name}.shape={log_probs.shape}"
        )
    if np.isnan(log_probs).any() or log_probs.max() > _SUM_TOL:
        raise ValueError(
            f"Argument `{name}` must hold log-probabilities in [-inf, 0]. Received: max={log_probs.max()!r}"
        )
    worst = float(np.max(np.abs(_logsumexp(log_probs, axis=-1))))
    if not worst <= _SUM_TOL:
        raise ValueError(
            f"Argument `{name}` must have rows whose probabilities sum to 1 (within {_SUM_TOL}); pass "
            f"log-softmax outputs, not logits. Received: largest |log sum exp|={worst:.4g}"
        )
    return log_probs


def _as_log_probs(values, name: str, ndim: int, log_probs: bool) -> np.ndarray:
    """Validated log-probabilities from probabilities (`log 0 = -inf`, exactly) or from log-probabilities."""
    if log_probs:
        return _check_log_probs(values, name, ndim)
    with np.errstate(divide="ignore"):
        return np.log(_check_probs(values, name, ndim))


def _check_labels(y, batch: int, num_classes: int) -> np.ndarray:
    """Returns integer class labels `(B,)` after checking shape, integrality and range."""
    y = np.asarray(y)
    if y.shape != (batch,):
        raise ValueError(f"Argument `y` must have shape (B,)=({batch},). Received: y.shape={y.shape}")
    integral_floats = np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_) or integral_floats):
        raise ValueError(f"Argument `y` must hold integer class labels. Received: y.dtype={y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"Argument `y` must hold labels in 0..{num_classes - 1}. Received: min={y.min()}, max={y.max()}"
        )
    return y


def _select(member_outputs: np.ndarray, members: Sequence[int] | None) -> np.ndarray:
    """Returns the members (first axis) listed in `members`, or all of them when `members` is None."""
    if members is None:
        return member_outputs
    index = np.asarray(members)
    num = member_outputs.shape[0]
    if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"Argument `members` must be a non-empty sequence of ints. Received: members={members!r}"
        )
    if index.min() < 0 or index.max() >= num:
        raise ValueError(
            f"Argument `members` must index members in 0..{num - 1} (N={num}). Received: members={list(members)}"
        )
    if np.unique(index).size != index.size:
        raise ValueError(f"Argument `members` must not repeat a member. Received: members={list(members)}")
    return member_outputs[index]


def _logsumexp(x, axis: int, ops=np):
    """Stable `log(sum(exp(x)))` along `axis`, keeping the axis; `-inf` where every entry is `-inf`. `ops`: the
    array namespace, `numpy` or `keras.ops` (see `LOG_COMBINERS`)."""
    peak = ops.max(x, axis=axis, keepdims=True)
    peak = ops.where(ops.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return peak + ops.log(ops.sum(ops.exp(x - peak), axis=axis, keepdims=True))


def _log_arithmetic_mean(log_probs, weights=None, ops=np):
    """`log(sum_i w_i p_i)`: the (weighted) arithmetic mean of member probabilities, from log-probabilities
    `(N, B, C)`; `weights (N,)` positive, summing to 1 (None: 1 / N each)."""
    if weights is None:
        return _logsumexp(log_probs, 0, ops)[0] - np.log(log_probs.shape[0])  # (B, C)
    return _logsumexp(log_probs + ops.log(weights)[:, None, None], 0, ops)[0]  # (B, C)


def _log_geometric_mean(log_probs, weights=None, ops=np):
    """`log softmax(sum_i w_i log p_i)`: the renormalised (weighted) geometric mean of member probabilities
    `(N, B, C)`; `weights (N,)` positive, summing to 1 (None: 1 / N each).

    Weighted, a class that has probability 0 in some member stays at a vanishing share (log p = -1e300) rather than
    failing, as a selected ensemble must answer every row. Unweighted NumPy input with a row where every class has
    probability 0 in some member raises (a compiled function's log-probabilities, of finite logits, have none)."""
    if weights is not None:
        finite = ops.where(ops.isfinite(log_probs), log_probs, -1e300)
        mixed = ops.sum(weights[:, None, None] * finite, axis=0)  # (B, C)
        mixed = mixed - ops.max(mixed, axis=-1, keepdims=True)
        return mixed - ops.log(ops.sum(ops.exp(mixed), axis=-1, keepdims=True))
    log_mean = ops.mean(log_probs, axis=0)  # (B, C) log of the unnormalised geometric mean
    if ops is np:  # compiled, the log-probabilities of finite logits are finite
        _check_geometric_rows(log_mean)
    return log_mean - _logsumexp(log_mean, -1, ops)  # (B, C)


def _check_geometric_rows(log_mean: np.ndarray) -> None:
    """Raises ValueError where the unnormalised geometric mean `(B, C)` is 0 for every class of a row."""
    empty = ~np.isfinite(log_mean).any(axis=-1)  # (B,)
    if empty.any():
        raise ValueError(
            f"The geometric mean is 0 for every class in rows {np.flatnonzero(empty)[:10].tolist()}: each class "
            "has probability 0 in some member. Pass log-probabilities (`log_probs=True`, from "
            "`predict_members(x, log_probs=True)`), in which no probability rounds to 0."
        )


LOG_COMBINERS: dict[str, Callable[..., np.ndarray]] = {
    "mean": _log_arithmetic_mean,
    "geometric": _log_geometric_mean,
}
"""THE registry of combiners: name -> `(member log-probabilities (N, B, C), member weights (N,) or None, ops=numpy)
-> ensemble log-probabilities (B, C)`.

Each formula is written once, against the operations NumPy and `keras.ops` share (`ops`: the `numpy` module, the
default, or `keras.ops` inside a compiled function), so the evaluation here and the training loop's compiled
epoch-end scores (`ensemble.training.train.compiled_scores`, `val_ensemble_accuracy`) combine the members the same way.

Adding a combiner is a change here: `combine`, `evaluate_classification`, `EnsemblePredictor`, `ensemble.evaluation.compare`,
the snapshot curve (`tasks.snapshots`), `ensemble.uncertainty.weighted_log_combine` (the member weights of a selected
ensemble), the live `val_ensemble_accuracy` (`TrainConfig.combiner`) and the config's `evaluation.combiner` all
take their names and formulas from it. Not yet the greedy selection's incremental scores (`ensemble.evaluation.selection`),
which keep running sums and branch on "geometric" themselves. Combiners apply to class probabilities; a regression
ensemble is always the members' mean (`combine_regression`)."""

COMBINERS: tuple[str, ...] = tuple(LOG_COMBINERS)
"""The combiner names of `LOG_COMBINERS`, in order."""


def _log_combine(log_probs: np.ndarray, method: str) -> np.ndarray:
    """Ensemble log-probabilities `(B, C)` of validated member log-probabilities `(N, B, C)`."""
    return LOG_COMBINERS[method](log_probs)


def _nll(log_probs: np.ndarray, y: np.ndarray) -> float:
    """Mean `-log p_b[y_b]` of validated log-probabilities `(B, C)` and labels `(B,)`."""
    return float(-np.mean(log_probs[np.arange(log_probs.shape[0]), y]))


# ---------------------------------------------------------------------------------------------------------------
# Combiners
# ---------------------------------------------------------------------------------------------------------------


def check_combiner(method: str, name: str = "method") -> None:
    """Raises ValueError unless `method` names a combiner of `LOG_COMBINERS`; the message calls it `name`."""
    if method not in LOG_COMBINERS:
        raise ValueError(f"Argument `{name}` must be one of {COMBINERS}. Received: {name}={method!r}")


def combine(
    member_probs, method: str = "mean", members: Sequence[int] | None = None, log_probs: bool = False
) -> np.ndarray:
    """Combines member probabilities into ensemble probabilities.

    Args:
        member_probs: Member probabilities `(N, B, C)` (log-probabilities with `log_probs=True`).
        method: `"mean"`, the arithmetic mean `sum_i p_i / N`, or `"geometric"`, the normalised geometric mean
            `(prod_i p_i)^(1/N)` renormalised over classes (Kondratyuk et al., eq. 1), computed in log space as
            `softmax(mean_i log p_i)` with no floor: a class of probability 0 in one member gets 0.
        members: Indices of the members to combine; all `N` when None.
        log_probs: `member_probs` holds log-probabilities (exact where probabilities underflow to 0).

    Returns:
        Ensemble probabilities `(B, C)`; every row sums to 1.
    """
    check_combiner(method)
    member_log_probs = _select(
        _as_log_probs(member_probs, "member_probs", 3, log_probs), members
    )  # (N, B, C)
    return np.exp(_log_combine(member_log_probs, method))  # (B, C)


def _check_regression(member_preds) -> np.ndarray:
    """Returns member predictions as `(N, B)` floats, accepting `(N, B)` or `(N, B, 1)`."""
    preds = np.asarray(member_preds, dtype=np.float64)
    if preds.ndim == 3 and preds.shape[-1] == 1:
        preds = preds[..., 0]  # (N, B)
    if preds.ndim != 2 or 0 in preds.shape:
        raise ValueError(
            "Argument `member_preds` must have shape (N, B) or (N, B, 1) with N, B >= 1. "
            f"Received: member_preds.shape={np.shape(member_preds)}"
        )
    return preds


def _check_targets(y, batch: int) -> np.ndarray:
    """Returns regression targets as `(B,)` floats, accepting `(B,)` or `(B, 1)`."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and y.shape[-1] == 1:
        y = y[:, 0]
    if y.shape != (batch,):
        raise ValueError(f"Argument `y` must have shape (B,)=({batch},). Received: y.shape={np.shape(y)}")
    return y


def combine_regression(member_preds, members: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combines member regression predictions into a mean and a spread.

    Args:
        member_preds: Member predicted means `(N, B)` or `(N, B, 1)`.
        members: Indices of the members to combine; all `N` when None.

    Returns:
        `(mean, spread)`, both `(B,)`: the average over members and their standard deviation (ddof=0, so a single
        member has spread 0).
    """
    preds = _select(_check_regression(member_preds), members)  # (N, B)
    return preds.mean(axis=0), preds.std(axis=0)


# ---------------------------------------------------------------------------------------------------------------
# Classification metrics on combined probabilities (B, C)
# ---------------------------------------------------------------------------------------------------------------


def accuracy(probs, y) -> float:
    """Fraction of samples whose argmax class (ties: lowest index) equals the label. `probs` is `(B, C)`."""
    probs = _check_probs(probs, "probs", ndim=2)
    y = _check_labels(y, *probs.shape)
    return float(np.mean(probs.argmax(axis=-1) == y))


def nll(probs, y, log_probs: bool = False) -> float:
    """Mean negative log-likelihood `mean_b -log p_b[y_b]` of probabilities `(B, C)` (log loss).

    Nothing is floored: a true class of probability 0 costs infinity. With `log_probs=True`, `probs` holds
    log-probabilities (e.g. log-softmax of logits), exact however confident the mistake. No softmax is applied.
    """
    log_probs = _as_log_probs(probs, "probs", 2, log_probs)
    return _nll(log_probs, _check_labels(y, *log_probs.shape))


def brier(probs, y) -> float:
    """Multi-class Brier score `mean_b sum_c (p_bc - onehot(y_b)_c)^2` of probabilities `(B, C)`.

    It ranges over `[0, 2]`. For a binary task written as `C=2` columns `[1 - p, p]` it equals twice the
    binary-only Brier score `mean_b (p_b - y_b)^2`, because both columns make the same error.
    """
    probs = _check_probs(probs, "probs", ndim=2)
    y = _check_labels(y, *probs.shape)
    onehot = np.eye(probs.shape[-1])[y]  # (B, C)
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=-1)))


def expected_calibration_error(probs, y, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, with equal-width bins.

    The confidence `max_c p_bc` falls in bin `k` when it lies in `(k / bins, (k + 1) / bins]`; the ECE is
    `sum_k (n_k / B) * |accuracy_k - mean confidence_k|` over non-empty bins.

    Args:
        probs: Probabilities `(B, C)`.
        y: Labels `(B,)`.
        bins: Number of equal-width confidence bins on `[0, 1]`.

    Returns:
        The ECE in `[0, 1]`.
    """
    check_int(bins, "bins")
    probs = _check_probs(probs, "probs", ndim=2)
    y = _check_labels(y, *probs.shape)
    confidence = probs.max(axis=-1)  # (B,)
    correct = (probs.argmax(axis=-1) == y).astype(np.float64)  # (B,)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)  # (B,)
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)  # (bins,) n_k * (acc_k - conf_k)
    return float(np.sum(np.abs(gap)) / probs.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# Diversity metrics on member probabilities (N, B, C)
# ---------------------------------------------------------------------------------------------------------------


def disagreement(member_probs) -> float:
    """Average over member pairs of the fraction of samples on which their argmax classes differ.

    Args:
        member_probs: Member probabilities `(N, B, C)`.

    Returns:
        A value in `[0, 1]`; 0 for a single member.
    """
    probs = _check_probs(member_probs, "member_probs", ndim=3)
    num, batch, classes = probs.shape
    if num == 1:
        return 0.0
    preds = probs.argmax(axis=-1)  # (N, B)
    flat = (preds + classes * np.arange(batch)).ravel()  # (N * B,) class index per (sample, class) cell
    votes = np.bincount(flat, minlength=batch * classes).reshape(batch, classes)  # (B, C) members voting c
    agreeing_pairs = np.sum(votes * (votes - 1) / 2, axis=-1)  # (B,)
    pairs = num * (num - 1) / 2
    return float(np.mean(1.0 - agreeing_pairs / pairs))


def normalized_disagreement(member_probs, y, method: str = "mean", log_probs: bool = False) -> float:
    """Disagreement divided by the error rate of the combined ensemble (disagreement normalised by error).

    Values near 1 mean the members disagree about as often as the ensemble errs. The error is floored at `1 / B`,
    the smallest non-zero error the batch can show, so a perfect ensemble gives `disagreement * B` (0 when the
    members also agree) instead of infinity or NaN.

    Args:
        member_probs: Member probabilities `(N, B, C)`.
        y: Labels `(B,)`.
        method: The combiner whose error normalises, see `combine`.
        log_probs: `member_probs` holds log-probabilities.

    Returns:
        A finite value `>= 0`.
    """
    check_combiner(method)
    member_log_probs = _as_log_probs(member_probs, "member_probs", 3, log_probs)  # (N, B, C)
    error = 1.0 - accuracy(np.exp(_log_combine(member_log_probs, method)), y)
    return float(disagreement(np.exp(member_log_probs)) / max(error, 1.0 / member_log_probs.shape[1]))


def oracle_accuracy(member_probs, y) -> float:
    """Fraction of samples that at least one member classifies correctly. `member_probs` is `(N, B, C)`."""
    probs = _check_probs(member_probs, "member_probs", ndim=3)
    y = _check_labels(y, *probs.shape[1:])
    return float(np.mean(np.any(probs.argmax(axis=-1) == y, axis=0)))


def member_metrics(member_probs, y, bins: int = 15, log_probs: bool = False) -> list[dict[str, float]]:
    """Per-member `member` (index), `accuracy`, `nll`, `brier` and `ece` for member probabilities `(N, B, C)`
    (log-probabilities with `log_probs=True`)."""
    member_log_probs = _as_log_probs(member_probs, "member_probs", 3, log_probs)  # (N, B, C)
    return [
        {
            "member": index,
            "accuracy": accuracy(np.exp(member), y),
            "nll": nll(member, y, log_probs=True),
            "brier": brier(np.exp(member), y),
            "ece": expected_calibration_error(np.exp(member), y, bins=bins),
        }
        for index, member in enumerate(member_log_probs)
    ]


def evaluate_classification(
    member_probs,
    y,
    method: str = "mean",
    bins: int = 15,
    members: Sequence[int] | None = None,
    log_probs: bool = False,
) -> dict[str, float]:
    """Evaluates a classification ensemble and its members.

    Args:
        member_probs: Member probabilities `(N, B, C)` (log-probabilities with `log_probs=True`).
        y: Labels `(B,)`.
        method: Combiner, `"mean"` or `"geometric"` (see `combine`).
        bins: Number of ECE bins.
        members: Indices of the members to evaluate; all `N` when None.
        log_probs: `member_probs` holds log-probabilities: the geometric mean and every NLL are then exact
            (see the module docstring).

    Returns:
        Plain Python numbers: `accuracy`, `nll`, `brier`, `ece` of the combined ensemble; `disagreement`,
        `normalized_disagreement`, `oracle_accuracy` of the members; `mean_member_accuracy`, `mean_member_nll`,
        `best_member_accuracy`; and `num_members` (an int).
    """
    check_combiner(method)
    member_log_probs = _select(
        _as_log_probs(member_probs, "member_probs", 3, log_probs), members
    )  # (N, B, C)
    probs = np.exp(member_log_probs)  # (N, B, C)
    combined_log = _log_combine(member_log_probs, method)  # (B, C)
    combined = np.exp(combined_log)  # (B, C)
    per_member = member_metrics(member_log_probs, y, bins=bins, log_probs=True)
    return {
        "accuracy": accuracy(combined, y),
        "nll": nll(combined_log, y, log_probs=True),
        "brier": brier(combined, y),
        "ece": expected_calibration_error(combined, y, bins=bins),
        "disagreement": disagreement(probs),
        "normalized_disagreement": normalized_disagreement(member_log_probs, y, method, log_probs=True),
        "oracle_accuracy": oracle_accuracy(probs, y),
        "mean_member_accuracy": float(np.mean([m["accuracy"] for m in per_member])),
        "mean_member_nll": float(np.mean([m["nll"] for m in per_member])),
        "best_member_accuracy": float(max(m["accuracy"] for m in per_member)),
        "num_members": int(probs.shape[0]),
    }


# ---------------------------------------------------------------------------------------------------------------
# Regression metrics
# ---------------------------------------------------------------------------------------------------------------


def rmse(pred, y) -> float:
    """Root mean squared error between predictions `(B,)` and targets `(B,)`."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = _check_targets(y, pred.shape[0])
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def mae(pred, y) -> float:
    """Mean absolute error between predictions `(B,)` and targets `(B,)`."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = _check_targets(y, pred.shape[0])
    return float(np.mean(np.abs(pred - y)))


def r2(pred, y) -> float:
    """Coefficient of determination `1 - sum (y - pred)^2 / sum (y - mean(y))^2` of predictions `(B,)`.

    1 is a perfect fit, 0 predicts no better than the targets' mean, negative is worse. Constant targets (zero
    total variance) give 1 for a perfect fit, else 0 (scikit-learn's `force_finite` convention), never NaN.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = _check_targets(y, pred.shape[0])
    residual, total = np.sum((y - pred) ** 2), np.sum((y - y.mean()) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1.0 - residual / total)


def gaussian_nll(mean, spread, y, min_std: float = 1e-3) -> float:
    """Mean Gaussian negative log-likelihood `0.5 * log(2 pi var) + (y - mean)^2 / (2 var)`.

    Args:
        mean: Predicted means `(B,)`.
        spread: Predicted standard deviations `(B,)`, e.g. the member spread from `combine_regression`.
        y: Targets `(B,)`.
        min_std: Floor on the standard deviation, `var = max(spread, min_std)^2`, so a single member (spread 0)
            gives a large but finite value.

    Returns:
        The NLL averaged over samples.
    """
    if not min_std > 0:
        raise ValueError(f"Argument `min_std` must be > 0. Received: min_std={min_std!r}")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    spread = np.asarray(spread, dtype=np.float64).reshape(-1)
    if spread.shape != mean.shape:
        raise ValueError(
            f"Argument `spread` must have the shape of `mean` {mean.shape}. Received: spread.shape={spread.shape}"
        )
    y = _check_targets(y, mean.shape[0])
    var = np.maximum(spread, min_std) ** 2  # (B,)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * var) + (y - mean) ** 2 / (2.0 * var)))


def evaluate_regression(member_preds, y, members: Sequence[int] | None = None) -> dict[str, float]:
    """Evaluates a regression ensemble and its members.

    Args:
        member_preds: Member predicted means `(N, B)` or `(N, B, 1)`.
        y: Targets `(B,)`.
        members: Indices of the members to evaluate; all `N` when None.

    Returns:
        Plain Python numbers: `rmse`, `mae`, `r2`, `gaussian_nll` of the ensemble mean (with the member spread as
        its standard deviation), `mean_member_rmse`, `mean_spread`, and `num_members` (an int).
    """
    preds = _select(_check_regression(member_preds), members)  # (N, B)
    mean, spread = combine_regression(preds)  # (B,), (B,)
    return {
        "rmse": rmse(mean, y),
        "mae": mae(mean, y),
        "r2": r2(mean, y),
        "gaussian_nll": gaussian_nll(mean, spread, y),
        "mean_member_rmse": float(np.mean([rmse(member, y) for member in preds])),
        "mean_spread": float(np.mean(spread)),
        "num_members": int(preds.shape[0]),
    }


# ---------------------------------------------------------------------------------------------------------------
# Registries: the metrics a model is judged on, the scores callbacks monitor, which way is better
# ---------------------------------------------------------------------------------------------------------------

KINDS: tuple[str, ...] = ("classification", "regression")


def task_kind(task: str) -> str:
    """`"regression"` or `"classification"` (`"binary"`, `"multiclass"`): the kind of task a metric is for."""
    return "regression" if task == "regression" else "classification"


@dataclass(frozen=True)
class MetricInfo:
    """What the pipeline needs to know about one ensemble metric.

    Attributes:
        name: the key in `evaluate_classification` / `evaluate_regression`'s result.
        kind: `"classification"` or `"regression"` (see `task_kind`).
        higher_is_better: whether a higher value is a better model.
    """

    name: str
    kind: str
    higher_is_better: bool


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("accuracy", "classification", True),
        MetricInfo("nll", "classification", False),
        MetricInfo("brier", "classification", False),
        MetricInfo("ece", "classification", False),
        MetricInfo("rmse", "regression", False),
        MetricInfo("mae", "regression", False),
        MetricInfo("r2", "regression", True),
    )
}
"""THE registry of the metrics a model version can be judged on: name -> kind of task and direction.

Adding a metric is a change here (and in `evaluate_classification` / `evaluate_regression`, which compute it):
`evaluation.metric`'s validation, the champion gate (`EvaluationSection.higher_is_better`) and the summaries take
their names and directions from it."""

DEFAULT_METRICS = {"classification": "accuracy", "regression": "rmse"}
"""The metric of each kind of task when none is configured (`evaluation.metric: null`)."""


def metrics_for(kind: str) -> tuple[str, ...]:
    """The names in `METRICS` of one kind of task (`"classification"` or `"regression"`), in registry order."""
    if kind not in KINDS:
        raise ValueError(f"Argument `kind` must be one of {KINDS}. Received: kind={kind!r}")
    return tuple(name for name, info in METRICS.items() if info.kind == kind)


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of `metric` (a name in `METRICS`) is better."""
    if metric not in METRICS:
        raise ValueError(f"Argument `metric` must be one of {tuple(METRICS)}. Received: metric={metric!r}")
    return METRICS[metric].higher_is_better


EPOCH_SCORES: dict[str, bool] = {
    "val_accuracy": True,  # the members' mean accuracy
    "val_ensemble_accuracy": True,  # accuracy of the members combined by `TrainConfig.combiner`
    "val_loss": False,  # the members' mean training loss on the validation rows (NLL, or MSE for regression)
}
"""THE registry of the validation scores `ensemble.training.train.fit` logs at epoch ends that callbacks may monitor:
name -> whether higher is better. `SnapshotCollector(keep_best=...)` ranks by the per-member ones, growth rounds
(`GrowthConfig.monitor`) detect plateaus on any of them."""


def monitor_mode(monitor: str) -> str:
    """`"max"` when a higher `monitor` (a name in `EPOCH_SCORES`) is better, else `"min"`."""
    if monitor not in EPOCH_SCORES:
        raise ValueError(
            f"Argument `monitor` must be one of {tuple(EPOCH_SCORES)}. Received: monitor={monitor!r}"
        )
    return "max" if EPOCH_SCORES[monitor] else "min"


HIGHER_IS_BETTER = {
    kind: {name: METRICS[name].higher_is_better for name in metrics_for(kind)} for kind in KINDS
}
"""`METRICS` as `{kind: {name: higher is better}}` (derived; edit `METRICS`)."""
