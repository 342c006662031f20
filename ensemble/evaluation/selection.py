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
selection that only fits the rows it chose on loses to the simple ensembles; with `prefer` it keeps one of them
(a sweep: the uniform ensemble) unless another beats it by a margin in standard errors, since on a few dozen rows
the cross-validated order is itself noise.

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


def _errors(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (log_probs.argmax(axis=-1) != y[None]).astype("float64")  # (K, B)


def _nll_rows(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -log_probs[:, np.arange(log_probs.shape[1]), y]  # (K, B)


def _brier_rows(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    onehot = np.eye(log_probs.shape[-1])[y]  # (B, C)
    return ((np.exp(log_probs) - onehot[None]) ** 2).sum(axis=-1)  # (K, B)


def _squared_errors(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (mean - y[None]) ** 2  # (K, B)


def _absolute_errors(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(mean - y[None])  # (K, B)


ROW_LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _errors,
    "nll": _nll_rows,
    "brier": _brier_rows,
    "rmse": _squared_errors,
    "mae": _absolute_errors,
    "r2": _squared_errors,
}
"""Each selectable metric's loss per row `(K, B)` (lower is better): a candidate with a lower mean row loss on the
same rows has the better metric (for rmse and r2 through the squared errors). `SCORES` are built from them, and
`cross_validated_choice` compares two candidates row by row with them."""


def _r2(mean: np.ndarray, y: np.ndarray) -> np.ndarray:
    residual, total = _squared_errors(mean, y).sum(axis=1), np.sum((y - y.mean()) ** 2)  # (K,), ()
    if total == 0:  # constant targets: 1 for a perfect fit, else 0, as `ensemble.evaluation.metrics.r2`
        return (residual == 0).astype("float64")
    return 1.0 - residual / total


SCORES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": lambda log_probs, y: 1.0 - _errors(log_probs, y).mean(axis=1),
    "nll": lambda log_probs, y: _nll_rows(log_probs, y).mean(axis=1),
    "brier": lambda log_probs, y: _brier_rows(log_probs, y).mean(axis=1),
    "rmse": lambda mean, y: np.sqrt(_squared_errors(mean, y).mean(axis=1)),
    "mae": lambda mean, y: _absolute_errors(mean, y).mean(axis=1),
    "r2": _r2,
}
"""The metrics of `ensemble.evaluation.metrics.METRICS` a selection can optimise, each vectorised over K candidate ensembles:
combined log-probabilities `(K, B, C)` (classification) or combined means `(K, B)` (regression), with labels /
targets `(B,)` -> values `(K,)`, as `ensemble.evaluation.metrics` computes them (`tests/ensemble/test_selection.py` compares).
Names, kind of task and direction come from `METRICS`; a metric is selectable by adding its vectorised score here."""

assert set(SCORES) <= set(METRICS), set(SCORES) - set(METRICS)  # names come from the one registry
assert set(ROW_LOSSES) == set(SCORES), set(ROW_LOSSES) ^ set(SCORES)

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


def combined_prediction(member_preds: np.ndarray, weights, metric: str, combiner: str = "mean") -> np.ndarray:
    """The `weights`-combined members: log-probabilities `(B, C)` from `(K, B, C)`, or the weighted mean `(B,)` from
    regression predictions `(K, B)` (`metric`'s kind of task says which)."""
    if METRICS[metric].kind == "regression":
        w = np.asarray(weights, "float64") / np.sum(weights)
        return np.tensordot(w, member_preds, axes=1)  # (B,)
    return weighted_log_combine(member_preds, weights, combiner)  # (B, C)


def ensemble_loss(
    member_preds: np.ndarray, weights, y: np.ndarray, metric: str, combiner: str = "mean"
) -> float:
    """The loss (lower is better, see `losses`) of the `weights`-combined members on `(member_preds, y)`."""
    combined = combined_prediction(member_preds, weights, metric, combiner)
    return float(losses(combined[None], np.asarray(y), metric)[0])


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


PREFER_UNIFORM_STANDARD_ERRORS = 3.0
"""A sweep's default margin (`choose_ensemble`, `sweep.selection_standard_errors`): the selection or the best
configuration replaces the uniform ensemble only when it beats it in cross-validation by more than this many
standard errors of their per-row difference. Chosen on data-split seeds 3-29 of `benchmarks/bench_sweep.py`
(digits and breast_cancer), not on the reported seeds 0-2: 0 (the lowest score wins) met the issue's target in
37 of 54, 2 in 41, 3 in 44; on breast_cancer's 85 validation rows the cross-validated order of the three is no
better than chance, and the uniform ensemble, which fits nothing to those rows, is the safer choice there."""


@dataclass(frozen=True)
class CrossValidatedChoice:
    """The result of `cross_validated_choice`.

    Attributes:
        chosen: the name of the chosen candidate: the best cross-validated score, or `prefer` when that one does
            not beat it by more than `standard_errors`.
        scores: each candidate's cross-validated score (lower is better): `metric` of its held-out predictions.
        weights: the chosen candidate's weights fitted on all rows `(K,)` (sums to 1).
        metric: the selection metric.
        z_scores: with `prefer`, each other candidate's held-out row losses minus the preferred one's, in standard
            errors of their mean (negative: better than the preferred candidate); else empty.
    """

    chosen: str
    scores: dict[str, float]
    weights: list[float]
    metric: str
    z_scores: dict[str, float] = field(default_factory=dict)

    def get_config(self) -> dict:
        return asdict(self)


def paired_z(losses_a: np.ndarray, losses_b: np.ndarray) -> float:
    """The mean of the per-row differences `losses_a - losses_b` `(B,)` in standard errors of that mean (negative:
    a is better); 0 for equal losses, +-inf for a constant nonzero difference."""
    difference = np.asarray(losses_a, "float64") - np.asarray(losses_b, "float64")
    mean = difference.mean()
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    if error == 0:
        return 0.0 if mean == 0 else float(np.copysign(np.inf, mean))
    return float(mean / error)


def cross_validated_choice(
    member_preds: np.ndarray,
    y: np.ndarray,
    candidates: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    metric: str = "nll",
    folds: int = 5,
    seed: int = 0,
    combiner: str = "mean",
    prefer: str | None = None,
    standard_errors: float = 0.0,
) -> CrossValidatedChoice:
    """Chooses among ways to weight the models by K-fold cross-validation over the validation rows.

    Each candidate maps `(member_preds, y)` of some rows to weights `(K,)`. It is fitted on all folds but one and
    predicts the held-out fold, for each fold in turn; its score is `metric` of these held-out predictions of all
    rows, and the candidate with the best score is refitted on all rows. A fixed ensemble (uniform weights) scores its plain validation score; a selection
    procedure scores what its choices are worth on rows it did not see, so the choice between a greedy selection
    and the simple ensembles beside it is not itself fitted to the rows that made the selection.

    On few rows the cross-validated order is itself noisy. With `prefer` (a candidate's name, e.g. the uniform
    ensemble, which fits nothing to these rows) the best-scoring candidate is chosen only when its held-out row
    losses (`ROW_LOSSES`) beat the preferred candidate's by more than `standard_errors` standard errors of their
    mean per-row difference (a paired one-sided test, `paired_z`); otherwise `prefer` is chosen (only the
    best-scoring candidate is tested; a z that is not a number, from infinite losses on both sides, keeps
    `prefer`).

    Args:
        member_preds: validation predictions `(K, B, C)` log-probabilities, or `(K, B)` (regression).
        y: validation labels / targets `(B,)`.
        candidates: name -> `fit(member_preds, y) -> weights (K,)`; ties go to the first in order.
        metric: the score (as `ensemble_loss`).
        folds: folds of the rows, 2 <= folds <= B.
        seed: draws the rows' fold assignment.
        combiner: how probabilities combine, as the predictor will combine them.
        prefer: the name of the candidate to keep unless another is clearly better; None: the best score wins.
        standard_errors: the margin, >= 0, by which another candidate must beat `prefer`.
    """
    preds, y = np.asarray(member_preds, dtype="float64"), np.asarray(y)
    if not candidates:
        raise ValueError(
            "Argument `candidates` must name at least one way to weight the models. Received: {}"
        )
    if not 2 <= int(folds) <= len(y):
        raise ValueError(f"Argument `folds` must be in [2, rows={len(y)}]. Received: folds={folds}")
    if prefer is not None and prefer not in candidates:
        raise ValueError(
            f"Argument `prefer` must be one of {list(candidates)} or None. Received: prefer={prefer!r}"
        )
    if not standard_errors >= 0:
        raise ValueError(
            f"Argument `standard_errors` must be >= 0. Received: standard_errors={standard_errors}"
        )
    held_out = np.array_split(np.random.default_rng(seed).permutation(len(y)), int(folds))
    scores, row_losses = {}, {}
    for name, fit in candidates.items():
        held_out_prediction = np.zeros(preds.shape[1:])  # (B, C) log-probabilities or (B,) means
        for held in held_out:
            kept = np.setdiff1d(np.arange(len(y)), held)
            weights = fit(preds[:, kept], y[kept])
            held_out_prediction[held] = combined_prediction(preds[:, held], weights, metric, combiner)
        scores[name] = float(losses(held_out_prediction[None], y, metric)[0])
        row_losses[name] = ROW_LOSSES[metric](held_out_prediction[None], y)[0]  # (B,)
    chosen = min(scores, key=scores.get)
    z_scores = {}
    if prefer is not None:
        z_scores = {n: paired_z(row_losses[n], row_losses[prefer]) for n in candidates if n != prefer}
        if chosen != prefer and not z_scores[chosen] < -standard_errors:
            chosen = prefer
    weights = np.asarray(candidates[chosen](preds, y), "float64")
    return CrossValidatedChoice(chosen, scores, (weights / weights.sum()).tolist(), metric, z_scores)


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
    standard_errors: float = PREFER_UNIFORM_STANDARD_ERRORS,
) -> SweepSelection:
    """A sweep's ensemble selection: the greedy selection (sorted initialisation), bagged over `bags` random halves
    of the models unless 0, and with `folds` >= 2 the cross-validated choice between it, the uniform ensemble and
    the best configuration (`selection_candidates`), which keeps the uniform ensemble unless another beats it by
    more than `standard_errors`; `groups[k]` is model k's configuration. Other arguments as `greedy_selection` /
    `cross_validated_choice`."""
    greedy = greedy_selection(member_preds, y, metric, combiner=combiner, sorted_init=True)
    bagged = (
        bagged_selection(member_preds, y, metric, bags, combiner=combiner, sorted_init=True) if bags else None
    )
    candidates = selection_candidates(bags, metric, combiner, groups)
    choice = (
        cross_validated_choice(
            member_preds,
            y,
            candidates,
            metric,
            folds,
            combiner=combiner,
            prefer="uniform",
            standard_errors=standard_errors,
        )
        if folds
        else None
    )
    best = best_group(member_preds, y, groups, metric, combiner)
    return SweepSelection(greedy, bagged, choice, best.tolist(), metric)
