"""The fused training loop: per-member index streams, many steps per compiled call, the summed member loss.

Every member sees its own batch each step: `(N, B, d)`, from its own shuffle of the training rows (or of its own
bootstrap resample with `bagging=True`). The loss is the SUM of the N member losses, so member n's gradient is
exactly the gradient it would get alone, and with an elementwise optimiser (Adam, SGD, momentum) a fused run equals
N separate runs.

Hooks (plain `keras.callbacks.Callback`s): `on_train_begin/end`, `on_epoch_begin/end(epoch, logs)`, and, for
callbacks that define it, `on_cycle_end(cycle, logs)` and `on_steps_end(logs)` (after every compiled call, with the
global `steps` it ran and the `learning_rates` they used: a checkpoint keeps the per-step record). A learning-rate
schedule that defines `cycle_ends(total_steps) -> list[int]` (global step counts at which a cycle ends) makes the
loop stop a compiled call exactly there, so a snapshot taken in `on_cycle_end` holds the weights of that step.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ensemble.checks import check_int
from ensemble.evaluation.metrics import LOG_COMBINERS, check_combiner
from ensemble.model.fused import FusedMLP
from ensemble.model.outputs import log_probs_from_logits
from ensemble.optim.optimizer_state import learning_rate_schedule
from ensemble.optim.optimizers import apply_gradients, check_elementwise, check_member_learning_rates
from ensemble.training.record import RunRecorder

logger = logging.getLogger(__name__)

JIT_COMPILE_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a fused ensemble.

    Attributes:
        epochs: passes over the training rows (each member's own order).
        batch_size: rows per member per step (B); 1 is supported and fast.
        bagging: each member trains on its own bootstrap resample of the rows (drawn once, reshuffled each epoch).
        seed: seed of the data order (and of bootstrap draws); weights are seeded by the model.
        steps_per_call: optimiser steps inside one compiled call (the Python loop runs once per call).
        jit_compile: XLA-compile the step loop: True, False, or "auto" (XLA where it compiles: when XLA fails,
            one warning gives the reason and the loop runs as a plain graph). Epoch-end scores use XLA only for
            True (see `evaluate_members`).
        train_metrics: evaluate each member on the full training set at every epoch end.
        track_unit_gradients: accumulate |dL/dW| per hidden unit over each epoch (for targeted growth).
        member_offset: global index of the model's first member: member n draws the data order (and bootstrap) of
            member `member_offset + n`, so a shard of a larger ensemble sees exactly what it would in one run.
        lr_scales: per-member factors of the optimiser's learning rate (a sweep; `ensemble.training.sweep`), one per member
            of the whole ensemble (member n of a shard uses entry `member_offset + n`); None: all 1.
        weight_decay: L2 penalty `weight_decay * sum(W**2)` on each member's kernels, added to its loss (as Keras'
            `kernel_regularizer=L2(weight_decay)`): one float for all members or one per member, as `lr_scales`.
        combiner: how `val_ensemble_accuracy` combines the members' class probabilities: a name in
            `ensemble.evaluation.metrics.COMBINERS` (the pipeline passes `evaluation.combiner`, as the test scores combine).

    `bagging` may also be one bool per member (as `lr_scales`).
    """

    epochs: int = 10
    batch_size: int = 1
    bagging: bool | tuple[bool, ...] = False
    seed: int = 0
    steps_per_call: int = 1000
    jit_compile: bool | str = "auto"
    train_metrics: bool = True
    track_unit_gradients: bool = False
    member_offset: int = 0
    lr_scales: tuple[float, ...] | None = None
    weight_decay: float | tuple[float, ...] = 0.0
    combiner: str = "mean"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "steps_per_call"):
            check_int(getattr(self, name), name)
        check_int(self.member_offset, "member_offset", minimum=0)
        check_jit_compile(self.jit_compile)
        check_combiner(self.combiner, "combiner")
        for name in ("bagging", "lr_scales", "weight_decay"):  # lists (YAML, JSON) -> hashable tuples
            if isinstance(getattr(self, name), list | np.ndarray):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.lr_scales is not None and not all(np.isfinite(s) and s > 0 for s in self.lr_scales):
            raise ValueError(f"Every entry of `lr_scales` must be > 0. Received: lr_scales={self.lr_scales}")
        if not all(np.isfinite(d) and d >= 0 for d in np.atleast_1d(self.weight_decay)):
            raise ValueError(
                f"Argument `weight_decay` must be >= 0 (one value, or one per member). "
                f"Received: weight_decay={self.weight_decay}"
            )

    def get_config(self) -> dict:
        return asdict(self)

    def per_member(self, name: str, members: int) -> np.ndarray:
        """`bagging`, `lr_scales` or `weight_decay` of the model's `members` members (entries `member_offset ..
        member_offset + members - 1` of a per-member tuple; a single value repeated) `(N,)`."""
        value = getattr(self, name)
        if value is None:
            value = 1.0
        if not isinstance(value, tuple):
            return np.full(members, value)
        if len(value) < self.member_offset + members:
            raise ValueError(
                f"Argument `{name}` has {len(value)} entries, but members {self.member_offset}.."
                f"{self.member_offset + members - 1} need one each: give one per member of the whole ensemble."
            )
        return np.asarray(value[self.member_offset : self.member_offset + members])


def member_rows(n_rows: int, member: int, seed: int, bagging: bool | Sequence[bool]) -> np.ndarray:
    """The rows member `member` trains on: all of them, or its own bootstrap resample `(n_rows,)` (`bagging`: one
    bool, or one per member of the whole ensemble)."""
    if not isinstance(bagging, bool | np.bool_):
        bagging = bagging[member]
    if not bagging:
        return np.arange(n_rows)
    return np.random.default_rng([seed, member, 0xB007]).integers(0, n_rows, size=n_rows)


def epoch_indices(
    n_rows: int,
    members: int,
    batch_size: int,
    epoch: int,
    seed: int,
    bagging: bool | Sequence[bool],
    member_offset: int = 0,
) -> np.ndarray:
    """Row indices of one epoch for all members, `(steps, N, B)` int32 with `steps = n_rows // B`.

    Member n's order depends only on `(seed, member_offset + n, epoch)`: it does not change when other members are
    added or their data changes, an epoch can be regenerated exactly (resume), and members `k..k+m` trained as a
    separate shard (`member_offset=k`) see the orders they would see in one run of all members.
    """
    steps = n_rows // batch_size
    orders = []
    for n in range(member_offset, member_offset + members):
        rows = member_rows(n_rows, n, seed, bagging)
        orders.append(np.random.default_rng([seed, n, epoch]).permutation(rows)[: steps * batch_size])
    return np.stack(orders).reshape(members, steps, batch_size).transpose(1, 0, 2).astype("int32")


@tf.autograph.experimental.do_not_convert  # no tensor control flow: AutoGraph's conversion only cost time
def member_losses(task: str, y, outputs):
    """Mean loss over the batch, per member: `y (N, B)`, `outputs (N, B, out)` -> `(N,)`, float32 (also when the
    outputs are float16/bfloat16 under a mixed-precision policy)."""
    outputs = tf.cast(outputs, tf.float32)
    if task == "multiclass":
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=outputs)
    elif task == "binary":
        losses = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(y, outputs.dtype), logits=outputs[..., 0]
        )
    else:
        losses = tf.square(outputs[..., 0] - tf.cast(y, outputs.dtype))
    return tf.reduce_mean(losses, axis=1)  # (N,)


def evaluate_members(
    model: FusedMLP, x: np.ndarray, y: np.ndarray, jit_compile: bool | str = "auto", combiner: str = "mean"
) -> dict[str, np.ndarray]:
    """Per-member loss and, for classification, accuracy on one shared set `(N,)`, plus the ensemble's accuracy
    (the members' probabilities combined by `combiner`, a name in `ensemble.evaluation.metrics.COMBINERS`: the accuracy
    `ensemble.evaluation.metrics.evaluate_classification(..., method=combiner)` gives).

    One compiled call (`compiled_scores`): eager op-by-op dispatch would hold the GIL at every op and, with a
    logging thread beside training, wait for it each time. It runs XLA-compiled only for `jit_compile=True`;
    "auto" scores as a plain graph: measured here (N=5, 1,257 rows) XLA saved ~30 ms per call but cost 5-7 s of
    compilation per row count (training and validation sets), more than it saves in hundreds of epochs.
    """
    scores = compiled_scores(model, jit_compile is True, combiner)(
        tf.constant(np.asarray(x, "float32")), label_tensor(model.task, y)
    )
    result = {"loss": scores["loss"].numpy().astype("float64")}
    if model.task != "regression":
        # Counts divided here, not in the graph: XLA turns `/ rows` into `* (1 / rows)`, one ulp off NumPy's mean.
        result["accuracy"] = scores["correct"].numpy() / len(x)
        result["ensemble_accuracy"] = np.float64(scores["ensemble_correct"].numpy() / len(x))
    return result


def label_tensor(task: str, y: np.ndarray) -> tf.Tensor:
    """Labels `(rows,)` as the compiled functions take them: int32 classes, float32 regression targets."""
    return tf.constant(np.asarray(y).astype("float32" if task == "regression" else "int32"))


def check_jit_compile(jit_compile) -> None:
    """Raises ValueError unless `jit_compile` is True, False or "auto"."""
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(
            'Argument `jit_compile` must be True, False or "auto" (XLA where it compiles). '
            f"Received: jit_compile={jit_compile!r}"
        )


def xla_failure_reason(error: tf.errors.OpError) -> str:
    """The first line of XLA's error (e.g. `... on XLA_CPU_JIT: EagerPyFunc (No registered ...)`), shortened."""
    lines = (error.message or type(error).__name__).strip().splitlines() or [type(error).__name__]
    return lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."


class XlaFunction:
    """`tf.function(fn)` compiled with XLA (`jit_compile=True`), as a plain graph (`False`), or with XLA where it
    compiles (`"auto"`).

    With "auto", a call that XLA fails to compile or run (an op without an XLA kernel, such as `tf.py_function`, or
    an LLVM error) logs ONE warning on the `ensemble.training.train` logger naming `what` and the reason, and this and every
    later call run the plain graph. XLA writes variables only when a compiled call completes, so a failed attempt
    leaves them untouched. Both paths compute the same function; results agree to float rounding.

    Attributes:
        uses_xla: whether calls currently run XLA-compiled.
        fallback_reason: XLA's error when "auto" fell back, else None.
    """

    def __init__(self, fn, input_signature: list, jit_compile: bool | str, what: str):
        check_jit_compile(jit_compile)
        self.what, self.fallback_reason = what, None
        self._xla = self._graph = None
        if jit_compile in (True, "auto"):
            self._xla = tf.function(fn, jit_compile=True, input_signature=input_signature)
        if jit_compile in (False, "auto"):
            self._graph = tf.function(fn, jit_compile=False, input_signature=input_signature)

    @property
    def uses_xla(self) -> bool:
        return self._xla is not None and self.fallback_reason is None

    def get_concrete_function(self, *args):
        """The traced graph that calls with `args` run (tracing only, no XLA compilation)."""
        return (self._xla if self.uses_xla else self._graph).get_concrete_function(*args)

    def __call__(self, *args):
        if not self.uses_xla:
            return self._graph(*args)
        if self._graph is None:  # jit_compile=True: XLA's errors are the caller's
            return self._xla(*args)
        try:
            return self._xla(*args)
        except tf.errors.OpError as error:
            self.fallback_reason = xla_failure_reason(error)
            logger.warning(
                "XLA could not compile %s; running it as a plain TensorFlow graph instead (jit_compile=False "
                "skips the attempt). Reason: %s",
                self.what,
                self.fallback_reason,
            )
        return self._graph(*args)


_SCORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_scores(model: FusedMLP, jit_compile: bool | str = "auto", combiner: str = "mean"):
    """The compiled `scores(x (B, d), y (B,)) -> {"loss" (N,)[, "correct" (N,), "ensemble_correct" ()]}`: mean
    losses, and float64 counts of rows each member (and the ensemble, its members combined by `combiner`:
    `ensemble.evaluation.metrics.LOG_COMBINERS`, the formula evaluation uses) classifies right.

    Every member scores the same rows; traced once per model (and `jit_compile`, see `XlaFunction`, and
    `combiner`) for any B (XLA compiles once per distinct B).
    """
    check_combiner(combiner, "combiner")
    cached, key = _SCORES.setdefault(model, {}), (jit_compile, combiner)
    if key in cached:
        return cached[key]
    model_ref = weakref.ref(model)  # the cache must not keep the model alive
    task, members = model.task, model.members
    signature = [
        tf.TensorSpec([None, model.input_dim], tf.float32),
        tf.TensorSpec([None], tf.float32 if task == "regression" else tf.int32),
    ]

    @tf.autograph.experimental.do_not_convert  # traced as written: no tensor control flow to convert
    def scores(x, y):
        rows = tf.shape(x)[0]
        outputs = model_ref()(tf.broadcast_to(x[None], [members, rows, x.shape[-1]]), training=False)
        result = {"loss": member_losses(task, tf.broadcast_to(y[None], [members, rows]), outputs)}
        if task != "regression":
            log_probs = log_probs_from_logits(outputs, task)  # (N, B, C) float64, as `predict_members`
            probs = tf.exp(log_probs)
            hits = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), y[None]), tf.float64)
            result["correct"] = tf.reduce_sum(hits, axis=1)
            # (B, C): the combiner's formula, as `evaluate_classification` applies it
            combined = ops.exp(LOG_COMBINERS[combiner](log_probs, ops=ops))
            ensemble = tf.argmax(combined, -1, output_type=tf.int32)
            result["ensemble_correct"] = tf.reduce_sum(tf.cast(tf.equal(ensemble, y), tf.float64))
        return result

    cached[key] = XlaFunction(scores, signature, jit_compile, f"the member scores of {model.name!r}")
    return cached[key]


def check_training_data(
    model: FusedMLP, x: np.ndarray, y: np.ndarray, batch_size: int, name: str = "train"
) -> None:
    """Shape/label checks that must pass before any step runs."""
    if x.ndim != 2 or x.shape[1] != model.input_dim:
        raise ValueError(f"`x_{name}` must have shape (rows, {model.input_dim}). Received: shape={x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"`y_{name}` must have shape ({x.shape[0]},). Received: shape={y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"`x_{name}` contains NaN or inf values.")
    if x.shape[0] < batch_size:
        raise ValueError(f"`x_{name}` has {x.shape[0]} rows, fewer than batch_size={batch_size}.")
    if model.task == "regression" and not np.isfinite(y).all():
        raise ValueError(f"`y_{name}` contains NaN or inf values.")
    if model.task != "regression" and not np.all(np.mod(y, 1) == 0):
        raise ValueError(
            f"`y_{name}` must hold integer class labels. Received e.g. {y[np.mod(y, 1) != 0][:3]}"
        )
    if model.task != "regression" and (y.min() < 0 or y.max() >= model.num_classes):
        raise ValueError(
            f"`y_{name}` labels must be in [0, {model.num_classes}). Received: [{y.min()}, {y.max()}]"
        )


def fit(
    model: FusedMLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    optimizer: keras.optimizers.Optimizer,
    config: TrainConfig = TrainConfig(),
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> keras.callbacks.History:
    """Train all members of `model` at once.

    Args:
        model: the fused ensemble.
        x: training features `(rows, d)`; y: labels `(rows,)` (int classes or float targets).
        optimizer: an elementwise Keras optimiser (its `learning_rate` may be a schedule).
        config: see `TrainConfig`; `config.epochs` is the epoch to stop at (as Keras' `epochs`).
        validation_data: `(x_val, y_val)` scored per member at each epoch end.
        callbacks: Keras callbacks; `on_cycle_end(cycle, logs)` is called on those that define it.
        initial_epoch: epoch to start at (resume, growth rounds).

    Returns:
        A `History` whose `history` maps each log key to one value per epoch. Scalar keys: `loss` (mean step loss
        over the epoch, averaged over members), `accuracy`, `val_loss`, `val_accuracy` (means over members),
        `val_ensemble_accuracy` (the members combined by `config.combiner`), `lr` (at the epoch's last step). Per-member `(N,)` arrays: `member_loss`,
        `member_accuracy`, `member_val_loss`, `member_val_accuracy`. `history.record` is the run's
        `ensemble.training.record.RunRecord` (these epochs' logs, the learning rate of every step as the optimiser used it,
        the cycle ends); `history.learning_rates` and `history.steps` are its per-step lists.
        `history.uses_xla` says whether the step loop ran XLA-compiled (False after an "auto" fallback).
    """
    x, y = np.asarray(x, "float32"), np.asarray(y)
    check_training_data(model, x, y, config.batch_size)
    if validation_data is not None:
        check_training_data(
            model, np.asarray(validation_data[0], "float32"), np.asarray(validation_data[1]), 1, "val"
        )
    check_elementwise(optimizer)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    if config.lr_scales is not None:
        check_member_learning_rates(optimizer, model.trainable_variables)
    x_train, y_train = tf.constant(x), label_tensor(model.task, y)

    run_steps = compiled_steps(model, optimizer, config)

    recorder, history = RunRecorder(), keras.callbacks.History()
    history.record = recorder.record
    history.learning_rates, history.steps = recorder.record.learning_rates, recorder.record.steps
    callback_list = keras.callbacks.CallbackList([*callbacks, recorder, history], model=model)
    cycle_hooks = [cb for cb in (*callbacks, recorder) if hasattr(cb, "on_cycle_end")]
    step_hooks = [cb for cb in (*callbacks, recorder) if hasattr(cb, "on_steps_end")]
    steps_per_epoch = len(x) // config.batch_size
    # Every call gets indices of one shape (S, N, B), the rows past its steps unused: one XLA compilation per fit.
    padded = np.zeros(
        (min(config.steps_per_call, steps_per_epoch), model.members, config.batch_size), "int32"
    )
    start_step = int(optimizer.iterations)
    total_steps = start_step + (config.epochs - initial_epoch) * steps_per_epoch
    all_cycle_ends = schedule_cycle_ends(optimizer, total_steps)
    cycle_ends = [s for s in all_cycle_ends if s > start_step]
    # Callbacks may check the run's length against the cycles (e.g. that the last cycle ends with the run).
    params = {"epochs": config.epochs, "steps": steps_per_epoch, "total_steps": total_steps}
    callback_list.set_params({**params, "cycle_ends": all_cycle_ends})

    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, config.epochs):
        callback_list.on_epoch_begin(epoch)
        for acc in run_steps.unit_gradients:
            acc.assign(tf.zeros_like(acc))
        indices = epoch_indices(
            len(x), model.members, config.batch_size, epoch, config.seed, config.bagging, config.member_offset
        )
        loss_sum, done = np.zeros(model.members), 0
        while done < steps_per_epoch:
            step = int(optimizer.iterations)
            stop = min(steps_per_epoch, done + config.steps_per_call)
            next_end = next((e for e in cycle_ends if e > step), None)
            if next_end is not None:
                stop = min(stop, done + next_end - step)
            padded[: stop - done] = indices[done:stop]
            chunk_loss, chunk_lrs = run_steps(x_train, y_train, tf.constant(padded), tf.constant(stop - done))
            loss_sum += chunk_loss.numpy()
            chunk = {
                "steps": list(range(step + 1, step + 1 + stop - done)),
                "learning_rates": chunk_lrs.numpy()[: stop - done].tolist(),
            }
            for hook in step_hooks:
                hook.on_steps_end(chunk)
            done = stop
            if next_end is not None and int(optimizer.iterations) == next_end:
                for hook in cycle_hooks:
                    hook.on_cycle_end(all_cycle_ends.index(next_end), {"step": next_end, "epoch": epoch})
        logs = epoch_logs(model, x, y, validation_data, loss_sum / steps_per_epoch, config)
        logs["lr"] = history.learning_rates[-1]
        if config.track_unit_gradients:
            logs["unit_gradients"] = [acc.numpy() for acc in run_steps.unit_gradients]
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    history.uses_xla = run_steps.uses_xla
    callback_list.on_train_end()
    return history


# One compiled step loop per (model, optimiser, options): re-tracing costs ~1 s, so `fit` calls reuse it.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_steps(model: FusedMLP, optimizer: keras.optimizers.Optimizer, config: TrainConfig):
    """The compiled loop `run_steps(x (rows, d), y (rows,), batch_indices (S, N, B), steps ()) -> (loss_sum (N,),
    lr (S,))`.

    It runs the first `steps <= S` optimiser steps in one call; step s trains member n on rows
    `batch_indices[s, n]`; `lr[s]` for `s >= steps` is 0. `fit` pads every call's indices to one S, so XLA compiles
    one program per fit (a new S would cost a new compilation). `run_steps.unit_gradients` holds, per hidden
    layer, the accumulated |dL/dW| per unit `(N, H)`.
    """
    lr_scales = None if config.lr_scales is None else tuple(config.per_member("lr_scales", model.members))
    decay = tuple(config.per_member("weight_decay", model.members))
    key = (id(optimizer), config.jit_compile, config.track_unit_gradients, lr_scales, decay)
    cached = _COMPILED.setdefault(model, {})
    if key in cached:
        return cached[key]
    scales = None if lr_scales is None else tf.constant(lr_scales, tf.float32)  # (N,)
    decay = tf.constant(decay, tf.float32) if any(decay) else None  # (N,); None: no penalty op at all
    variables = model.trainable_variables
    unit_gradients = [tf.Variable(tf.zeros((model.members, units))) for units in model.hidden_units]
    kernel_index = [[id(v) for v in variables].index(id(layer.kernel)) for layer in model.hidden_layers]

    signature = [
        tf.TensorSpec([None, model.input_dim], tf.float32),  # x_train (rows, d)
        tf.TensorSpec([None], tf.float32 if model.task == "regression" else tf.int32),  # y_train (rows,)
        tf.TensorSpec([None, model.members, None], tf.int32),  # batch_indices (S, N, B)
        tf.TensorSpec([], tf.int32),  # steps to run, <= S
    ]

    model_ref, task, members = (
        weakref.ref(model),
        model.task,
        model.members,
    )  # the cache must not keep the model alive

    def run_steps(x_train, y_train, batch_indices, steps):  # (rows, d), (rows,), (S, N, B), ()
        loss_sum = tf.zeros([members])
        lrs = tf.TensorArray(tf.float32, size=tf.shape(batch_indices)[0], element_shape=[])  # unwritten: 0
        for s in tf.range(steps):
            rows = batch_indices[s]  # (N, B)
            xb, yb = tf.gather(x_train, rows), tf.gather(y_train, rows)  # (N, B, d), (N, B)
            with tf.GradientTape() as tape:
                losses = member_losses(task, yb, model_ref()(xb, training=True))  # (N,)
                total = tf.reduce_sum(losses)  # sum, not mean: each member gets exactly its own gradient
                if decay is not None:
                    total += l2_penalty(model_ref(), decay)
            grads = tape.gradient(total, variables)
            lrs = lrs.write(s, apply_gradients(optimizer, grads, variables, scales))  # the LR this step used
            loss_sum += losses
            if config.track_unit_gradients:
                for acc, index in zip(unit_gradients, kernel_index, strict=True):
                    acc.assign_add(tf.reduce_sum(tf.abs(grads[index]), axis=1))  # (N, H)
        return loss_sum, lrs.stack()

    # Traced once for any S, rows, B; XLA compiles once per distinct shape (see `XlaFunction`).
    compiled = XlaFunction(run_steps, signature, config.jit_compile, f"the step loop of {model.name!r}")
    compiled.unit_gradients = unit_gradients
    cached[key] = compiled
    return compiled


def l2_penalty(model: FusedMLP, decay: tf.Tensor) -> tf.Tensor:
    """`sum_n decay[n] * sum(W_n**2)` over every member's kernels (biases are not penalised): member n's share is
    Keras' `L2(decay[n])` kernel regulariser on each of its layers. `decay (N,)` -> scalar."""
    return tf.add_n(
        [
            tf.reduce_sum(decay * tf.reduce_sum(tf.square(layer.kernel), axis=[1, 2]))
            for layer in model.dense_layers
        ]
    )


def schedule_cycle_ends(optimizer: keras.optimizers.Optimizer, total_steps: int) -> list[int]:
    """Global step counts at which the optimiser's LR schedule ends a cycle (empty without such a schedule)."""
    schedule = learning_rate_schedule(optimizer)
    return sorted(schedule.cycle_ends(total_steps)) if hasattr(schedule, "cycle_ends") else []


def epoch_logs(model, x, y, validation_data, mean_step_loss: np.ndarray, config: TrainConfig) -> dict:
    """Epoch-end logs: scalar means over members plus per-member `(N,)` arrays (see `fit`)."""
    logs: dict = {"member_loss": mean_step_loss, "loss": float(mean_step_loss.mean())}
    if config.train_metrics and model.task != "regression":
        logs["member_accuracy"] = evaluate_members(model, x, y, config.jit_compile)["accuracy"]
        logs["accuracy"] = float(logs["member_accuracy"].mean())
    if validation_data is not None:
        scores = evaluate_members(model, *validation_data, config.jit_compile, config.combiner)
        logs["member_val_loss"], logs["val_loss"] = scores["loss"], float(scores["loss"].mean())
        if "accuracy" in scores:
            logs["member_val_accuracy"], logs["val_accuracy"] = (
                scores["accuracy"],
                float(scores["accuracy"].mean()),
            )
            logs["val_ensemble_accuracy"] = float(scores["ensemble_accuracy"])
    return logs
