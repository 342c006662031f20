"""Ensemble selection: greedy forward selection with replacement from a library of models (Caruana et al., 2004).

Start from the empty ensemble; at each round add the model (any, again if it helps: "with replacement") whose
addition gives the best validation score of the combined ensemble; after `rounds` rounds keep the prefix that
scored best. A model chosen c times gets weight c / (models chosen), so the result is a weighted ensemble of the
library (`ensemble.predictor.EnsemblePredictor(weights=...)`). Selecting with replacement lets good models gain
weight and keeps the score from getting worse as rounds go on (Caruana et al.'s "selection with replacement").

Caruana et al.'s remedies for small validation splits: `sorted_init` starts from the best k models (k chosen on
validation) instead of one; `bagged_selection` averages the selections of random halves of the library. And
`cross_validated_choice` chooses between ways to weight the models (e.g. `selection_candidates`: the selection, the
uniform ensemble, the best configuration) by their K-fold cross-validated score over the validation rows, so a
selection that only fits the rows it chose on loses to the simple ensembles.

Metrics: the names in `SCORES`, the metrics of the registry `ensemble.evaluation.metrics.METRICS` that a selection can
optimise, scored on the combined probabilities (classification) or the combined mean (regression); the registry says
which kind of task each is for and which way is better. Every score here is a loss (lower is better): a metric where
higher is better (accuracy, r2) is minimised as `1 - value` (accuracy as the error rate). Member predictions:
log-probabilities `(K, B, C)` or regression predictions `(K, B)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ensemble.checks import check_int
from ensemble.evaluation.metrics import METRICS, higher_is_better, metrics_for, task_kind
from ensemble.uncertainty import weighted_log_combine


def _accuracy(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (log_probs.argmax(axis=-1) == y[None]).mean(axis=1)  # (K,)


def _nll(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -log_probs[:, np.arange(log_probs.shape[1]), y].mean(axis=1)  # (K,)


def _brier(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    onehot = np.eye(log_probs.shape[-1])[y]  # (B, C)
    return ((np.exp(log_probs) - onehot[None]) ** 2).sum(axis=-1).mean(axis=1)  # (K,)


def _rmse(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(((mean - y[None]) ** 2).mean(axis=1))  # (K,)


def _mae(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(mean - y[None]).mean(axis=1)  # (K,)


def _r2(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    residual, total = ((mean - y[None]) ** 2).sum(axis=1), np.sum((y - y.mean()) ** 2)  # (K,), ()
    if total == 0:  # constant targets: 1 for a perfect fit, else 0, as `ensemble.evaluation.metrics.r2`
        return (residual == 0).astype("float64")
    return 1.0 - residual / total


SCORES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy,
    "nll": _nll,
    "brier": _brier,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}
"""The metrics of `ensemble.evaluation.metrics.METRICS` a selection can optimise, each vectorised over K candidate ensembles:
combined log-probabilities `(K, B, C)` (classification) or combined means `(K, B)` (regression), with labels /
targets `(B,)` -> values `(K,)`, as `ensemble.evaluation.metrics` computes them (`tests/ensemble/test_selection.py` compares).
Names, kind of task and direction come from `METRICS`; a metric is selectable by adding its vectorised score here."""

assert set(SCORES) <= set(METRICS), set(SCORES) - set(METRICS)  # names come from the one registry

SELECTION_METRICS: tuple[str, ...] = tuple(name for name in METRICS if name in SCORES)
"""The selectable metrics, in registry order (derived; edit `SCORES` or `ensemble.evaluation.metrics.METRICS`)."""

DEFAULT_SELECTION_METRICS = {"classification": "nll", "regression": "rmse"}
"""The selection metric of each kind of task when none is configured (`sweep.selection_metric: null`)."""


def selection_metrics(kind: str) -> tuple[str, ...]:
    """The selectable metrics of one kind of task (`"classification"` or `"regression"`), in registry order."""
    return tuple(name for name in metrics_for(kind) if name in SCORES)


def check_metric(metric: str | None, task: str) -> str:
    """The selection metric for `task` (`"binary"`, `"multiclass"` or `"regression"`): `metric`, or the task's
    default from `DEFAULT_SELECTION_METRICS` when None; raises when `metric` is not selectable or is for the other
    kind of task, naming the ones that fit."""
    kind = task_kind(task)
    if metric is None:
        return DEFAULT_SELECTION_METRICS[kind]
    if metric not in SELECTION_METRICS:
        raise ValueError(
            f"Argument `selection_metric` must be one of {SELECTION_METRICS} (or None: the task's default, "
            f"{DEFAULT_SELECTION_METRICS}). Received: selection_metric={metric!r}"
        )
    if METRICS[metric].kind != kind:
        raise ValueError(
            f"Argument `selection_metric={metric!r}` is a {METRICS[metric].kind} metric but the data is a {task} "
            f"task; use one of {selection_metrics(kind)} (or leave it unset: {DEFAULT_SELECTION_METRICS[kind]})."
        )
    return metric


def losses(predictions: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Losses `(K,)` (lower is better) of K candidate ensembles' combined log-probabilities `(K, B, C)` or means
    `(K, B)`: `metric`'s value, or `1 - value` where higher is better (`ensemble.evaluation.metrics.METRICS`)."""
    values = SCORES[metric](predictions, y)  # (K,)
    return 1.0 - values if higher_is_better(metric) else values


def ensemble_loss(
    member_preds: np.ndarray, weights, y: np.ndarray, metric: str, combiner: str = "mean"
) -> float:
    """The loss (lower is better, see `losses`) of the `weights`-combined members on `(member_preds, y)`."""
    if METRICS[metric].kind == "regression":
        w = np.asarray(weights, "float64") / np.sum(weights)
        mean = np.tensordot(w, member_preds, axes=1)  # (B,)
        return float(losses(mean[None], np.asarray(y), metric)[0])
    return float(losses(weighted_log_combine(member_preds, weights, combiner)[None], y, metric)[0])


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
    sorted_init: bool = False,
) -> Selection:
    """Caruana et al.'s forward selection with replacement on validation predictions.

    Args:
        member_preds: the library's validation predictions: log-probabilities `(K, B, C)`, or `(K, B)` for
            regression (then `metric` must be "rmse").
        y: validation labels / targets `(B,)`.
        metric: a name in `SELECTION_METRICS` of the predictions' kind of task ("nll", the default, "accuracy",
            "brier"; "rmse", "mae", "r2" for regression).
        rounds: models added in all (None: `max(2 K, 20)`); the best-scoring prefix is kept.
        combiner: how probabilities combine ("mean" or "geometric"), as the predictor will combine them.
        sorted_init: Caruana et al.'s sorted initialisation: first add the models in order of their own validation
            score, as many as make the best such uniform top-k ensemble (k chosen on validation), then `rounds`
            greedy rounds. It starts selection from a broad ensemble instead of one model, which overfits a small
            validation split less.

    Returns:
        A `Selection`; ties go to the lower index, so the result is deterministic. Its `curve` and `order` hold the
        initial models first (one entry per model: the top-j score), then one per round.
    """
    preds = np.asarray(member_preds, dtype="float64")
    regression = preds.ndim == 2
    kind = "regression" if regression else "classification"
    if metric not in selection_metrics(kind):
        raise ValueError(
            f"Argument `metric` must be one of {selection_metrics(kind)} for {kind} predictions of shape "
            f"{'(K, B)' if regression else '(K, B, C)'}. Received: metric={metric!r}, shape={preds.shape}"
        )
    if preds.shape[0] < 1 or preds.shape[1] != len(y):
        raise ValueError(f"Expected (K >= 1, B={len(y)}, ...) predictions. Received: shape={preds.shape}")
    rounds = max(2 * preds.shape[0], 20) if rounds is None else int(rounds)
    if rounds < 1:
        raise ValueError(f"Argument `rounds` must be >= 1. Received: rounds={rounds}")
    y = np.asarray(y)
    order, curve = [], []
    running = None  # the chosen models' sum: regression predictions (B,), or the combiner's (B, C) state
    if sorted_init:
        own = candidate_scores(preds, None, 0, y, metric, combiner)  # (K,) each model alone
        for k in np.argsort(own, kind="stable"):  # the top-j uniform ensembles, j = 1..K
            curve.append(float(candidate_scores(preds[[k]], running, len(order), y, metric, combiner)[0]))
            running = add_model(running, preds[k], regression, combiner)
            order.append(int(k))
        top = int(np.argmin(curve)) + 1
        order, curve = order[:top], curve[:top]
        running = combined_state(preds[order], regression, combiner)
    for _ in range(rounds):
        losses = candidate_scores(preds, running, len(order), y, metric, combiner)  # (K,)
        best = int(np.argmin(losses))
        running = add_model(running, preds[best], regression, combiner)
        order.append(best)
        curve.append(float(losses[best]))
    best_round = int(np.argmin(curve))
    kept = np.bincount(order[: best_round + 1], minlength=preds.shape[0])
    return Selection(kept.tolist(), curve, best_round, metric, order)


def add_model(running, pred: np.ndarray, regression: bool, combiner: str) -> np.ndarray:
    """The running state of `candidate_scores` after adding one model's predictions `(B, C)` / `(B,)`."""
    if running is None:
        return pred
    if regression or combiner == "geometric":
        return running + pred
    return np.logaddexp(running, pred)


def combined_state(preds: np.ndarray, regression: bool, combiner: str) -> np.ndarray:
    """The running state of `candidate_scores` for the models `preds` `(k, B, C)` / `(k, B)`, k >= 1."""
    if regression or combiner == "geometric":
        return preds.sum(axis=0)
    return np.logaddexp.reduce(preds, axis=0)


def candidate_scores(preds, running, chosen: int, y, metric: str, combiner: str) -> np.ndarray:
    """The score of the current ensemble (`chosen` models, summed in `running`) plus each model `(K,)`."""
    if preds.ndim == 2:  # regression: running = sum of chosen predictions (B,)
        total = preds if running is None else preds + running[None]
        return losses(total / (chosen + 1), y, metric)  # (K, B) means
    if combiner == "geometric":  # running = sum of chosen log-probabilities (B, C)
        mixed = (preds if running is None else preds + running[None]) / (chosen + 1)
        mixed = mixed - mixed.max(axis=-1, keepdims=True)
        log_probs = mixed - np.log(np.exp(mixed).sum(axis=-1, keepdims=True))
    else:  # running = log of the chosen probabilities' sum (B, C)
        total = preds if running is None else np.logaddexp(preds, running[None])
        log_probs = total - np.log(chosen + 1)
    return losses(log_probs, y, metric)


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
    sorted_init: bool = False,
) -> BaggedSelection:
    """Caruana et al.'s bagged ensemble selection: `greedy_selection` on `bags` random subsets of the library (each
    holds `fraction` of the models, drawn without replacement), the resulting ensembles averaged.

    A small validation split overfits plain greedy selection (it keeps few models that happen to fit those rows);
    averaging over bags spreads the weight over models that are good on many subsets. Arguments as
    `greedy_selection`; `seed` draws the subsets.
    """
    preds = np.asarray(member_preds, dtype="float64")
    check_int(bags, "bags")
    if not 0 < fraction <= 1:
        raise ValueError(f"Argument `fraction` must be in (0, 1]. Received: fraction={fraction}")
    rng, models = np.random.default_rng(seed), preds.shape[0]
    size = max(1, round(models * fraction))
    total, curve = np.zeros(models), []
    for _ in range(int(bags)):
        subset = np.sort(rng.choice(models, size, replace=False))
        chosen = greedy_selection(preds[subset], y, metric, rounds, combiner, sorted_init)
        total[subset] += chosen.weights
        curve.append(ensemble_loss(preds, total, y, metric, combiner))
    return BaggedSelection((total / bags).tolist(), curve, metric)


def best_group(
    member_preds: np.ndarray, y: np.ndarray, groups, metric: str = "nll", combiner: str = "mean"
) -> np.ndarray:
    """Uniform weights `(K,)` over the group of models (e.g. one configuration's seeds) whose uniform ensemble
    scores best on `(member_preds, y)`; `groups[k]` is model k's group. Ties go to the group met first."""
    groups = np.asarray(groups)
    names = list(dict.fromkeys(groups.tolist()))
    scores = [
        ensemble_loss(member_preds[groups == g], np.ones(np.sum(groups == g)), y, metric, combiner)
        for g in names
    ]
    chosen = groups == names[int(np.argmin(scores))]
    return chosen / chosen.sum()


@dataclass(frozen=True)
class CrossValidatedChoice:
    """The result of `cross_validated_choice`.

    Attributes:
        chosen: the name of the candidate with the best cross-validated score.
        scores: each candidate's cross-validated score (lower is better).
        weights: the chosen candidate's weights fitted on all rows `(K,)` (sums to 1).
        metric: the selection metric.
    """

    chosen: str
    scores: dict[str, float]
    weights: list[float]
    metric: str

    def get_config(self) -> dict:
        return asdict(self)


def cross_validated_choice(
    member_preds: np.ndarray,
    y: np.ndarray,
    candidates: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    metric: str = "nll",
    folds: int = 5,
    seed: int = 0,
    combiner: str = "mean",
) -> CrossValidatedChoice:
    """Chooses among ways to weight the models by K-fold cross-validation over the validation rows.

    Each candidate maps `(member_preds, y)` of some rows to weights `(K,)`. It is fitted on all folds but one and
    scored on the held-out fold, for each fold in turn; the candidate with the best row-weighted mean held-out score
    is refitted on all rows. A fixed ensemble (uniform weights) scores its plain validation score; a selection
    procedure scores what its choices are worth on rows it did not see, so the choice between a greedy selection
    and the simple ensembles beside it is not itself fitted to the rows that made the selection.

    Args:
        member_preds: validation predictions `(K, B, C)` log-probabilities, or `(K, B)` (regression).
        y: validation labels / targets `(B,)`.
        candidates: name -> `fit(member_preds, y) -> weights (K,)`; ties go to the first in order.
        metric: the score (as `ensemble_loss`).
        folds: folds of the rows, 2 <= folds <= B.
        seed: draws the rows' fold assignment.
        combiner: how probabilities combine, as the predictor will combine them.
    """
    preds, y = np.asarray(member_preds, dtype="float64"), np.asarray(y)
    if not candidates:
        raise ValueError(
            "Argument `candidates` must name at least one way to weight the models. Received: {}"
        )
    if not 2 <= int(folds) <= len(y):
        raise ValueError(f"Argument `folds` must be in [2, rows={len(y)}]. Received: folds={folds}")
    held_out = np.array_split(np.random.default_rng(seed).permutation(len(y)), int(folds))
    scores = {}
    for name, fit in candidates.items():
        total = 0.0
        for held in held_out:
            kept = np.setdiff1d(np.arange(len(y)), held)
            weights = fit(preds[:, kept], y[kept])
            total += ensemble_loss(preds[:, held], weights, y[held], metric, combiner) * len(held)
        scores[name] = total / len(y)
    chosen = min(scores, key=scores.get)
    weights = np.asarray(candidates[chosen](preds, y), "float64")
    return CrossValidatedChoice(chosen, scores, (weights / weights.sum()).tolist(), metric)


def selection_candidates(bags: int, metric: str, combiner: str, groups) -> dict:
    """The ensembles the cross-validated choice weighs, each as `fit(member_preds (K, B, ...), y (B,)) -> (K,)`:
    the selection (bagged over `bags` halves, or plain greedy if 0; sorted initialisation), the uniform ensemble,
    and the best configuration (`groups[k]`: model k's configuration)."""

    def selection(preds, y):
        if bags:
            return bagged_selection(preds, y, metric, bags, combiner=combiner, sorted_init=True).weights
        return greedy_selection(preds, y, metric, combiner=combiner, sorted_init=True).weights

    return {
        "selection": selection,
        "uniform": lambda preds, y: np.ones(len(preds)),
        "best_configuration": lambda preds, y: best_group(preds, y, groups, metric, combiner),
    }


@dataclass(frozen=True)
class SweepSelection:
    """The result of `choose_ensemble`: the weights `(K,)` of each ensemble it weighs, and how it chose.

    Attributes:
        greedy: the plain (unbagged) greedy selection on all models, sorted initialisation (its curve is the one
            to plot).
        bagged: the bagged selection, or None without bags.
        choice: the cross-validated choice, or None without folds (the selection is then registered unchosen).
        best_configuration: uniform weights over the best configuration's models (`best_group`).
        metric: the selection metric.
    """

    greedy: Selection
    bagged: BaggedSelection | None
    choice: CrossValidatedChoice | None
    best_configuration: list[float]
    metric: str

    @property
    def chosen(self) -> str:
        """The registered ensemble: `"selection"`, `"uniform"` or `"best_configuration"`."""
        return self.choice.chosen if self.choice else "selection"

    @property
    def weights(self) -> np.ndarray:
        """The registered ensemble's weights `(K,)`: the cross-validated choice's, else the selection's."""
        return np.asarray(self.choice.weights if self.choice else (self.bagged or self.greedy).weights)


def choose_ensemble(
    member_preds: np.ndarray,
    y: np.ndarray,
    groups,
    metric: str = "nll",
    bags: int = 20,
    folds: int = 5,
    combiner: str = "mean",
) -> SweepSelection:
    """A sweep's ensemble selection: the greedy selection (sorted initialisation), bagged over `bags` random halves
    of the models unless 0, and with `folds` >= 2 the cross-validated choice between it, the uniform ensemble and
    the best configuration (`selection_candidates`); `groups[k]` is model k's configuration. Other arguments as
    `greedy_selection` / `cross_validated_choice`."""
    greedy = greedy_selection(member_preds, y, metric, combiner=combiner, sorted_init=True)
    bagged = (
        bagged_selection(member_preds, y, metric, bags, combiner=combiner, sorted_init=True) if bags else None
    )
    candidates = selection_candidates(bags, metric, combiner, groups)
    choice = (
        cross_validated_choice(member_preds, y, candidates, metric, folds, combiner=combiner)
        if folds
        else None
    )
    best = best_group(member_preds, y, groups, metric, combiner)
    return SweepSelection(greedy, bagged, choice, best.tolist(), metric)
