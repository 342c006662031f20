"""Apply a Keras optimiser's update with one fused TensorFlow kernel per variable where the formula allows it.

At batch size 1 a fused step costs op dispatch, not arithmetic. Keras' Adam is a chain of ~10 small ops per
variable; TF's `ResourceApplyAdam` is one op with the same formula and reads/writes the Keras optimiser's own slot
variables, so checkpoints, growth (slot resizing) and the learning-rate schedule stay Keras'.
Any other optimiser (or option such as weight decay or EMA) falls back to `optimizer.apply`.

Per-member learning rates (`lr_scales (N,)`, a sweep): member n's update uses `lr * lr_scales[n]`. SGD and momentum
take it through the gradient (`lr * (s g)`: the update is linear in both); Adam, which normalises the gradient
away, by the same formula as `ResourceApplyAdam` written with a `(N, 1, ...)` learning rate (XLA fuses it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ensemble.optim.optimizer_state import get_slot

COUPLING_OPTIONS = ("clipnorm", "global_clipnorm")


def check_elementwise(optimizer: keras.optimizers.Optimizer) -> None:
    """Reject options that mix members' gradients (norms taken over a whole stacked variable).

    Raises:
        ValueError: naming the option, when `clipnorm` or `global_clipnorm` is set.
    """
    for name in COUPLING_OPTIONS:
        value = getattr(optimizer, name, None)
        if value is not None:
            raise ValueError(
                f"Optimizer option `{name}={value}` couples ensemble members: the norm is taken over all members' "
                "stacked weights, so one member's gradient would change the others' updates. Use `clipvalue` "
                "(elementwise) or no clipping."
            )


def fused_kind(optimizer: keras.optimizers.Optimizer) -> str | None:
    """`"adam"`, `"momentum"` or `"sgd"` when a single TF kernel reproduces the update exactly, else None."""
    plain = (
        getattr(optimizer, "weight_decay", None) is None
        and optimizer.clipvalue is None
        and not optimizer.use_ema
        and optimizer.loss_scale_factor is None
        and optimizer.gradient_accumulation_steps is None
    )
    if not plain:
        return None
    if type(optimizer) is keras.optimizers.Adam and not optimizer.amsgrad:
        return "adam"
    if type(optimizer) is keras.optimizers.SGD:
        return "momentum" if optimizer.momentum else "sgd"
    return None


def check_member_learning_rates(optimizer: keras.optimizers.Optimizer, variables: list) -> None:
    """Per-member learning rates need an exact fused formula (Adam, SGD, momentum; no clipping, weight decay,
    EMA or constraints); raises ValueError naming what to remove otherwise."""
    if fused_kind(optimizer) is None or any(v.constraint is not None for v in variables):
        raise ValueError(
            f"Per-member learning rates (a sweep over `learning_rate`) need plain Adam or SGD (momentum, nesterov); "
            f"{type(optimizer).__name__} with these options (clipvalue, weight_decay, EMA, loss scaling, gradient "
            "accumulation or a weight constraint) cannot scale each member's step. Remove those options or do not "
            "sweep the learning rate."
        )


def member_scale(scales: tf.Tensor, variable) -> tf.Tensor:
    """`scales (N,)` shaped to broadcast over a stacked variable `(N, ...)`: `(N, 1, ..., 1)`."""
    return tf.reshape(scales, [-1] + [1] * (len(variable.shape) - 1))


@tf.autograph.experimental.do_not_convert  # Python control flow only: AutoGraph's conversion cost ~0.3 s per trace
def apply_gradients(
    optimizer: keras.optimizers.Optimizer, grads: list, variables: list, lr_scales: tf.Tensor | None = None
):
    """Update `variables` with `grads` exactly as `optimizer.apply(grads, variables)` would (graph-safe).

    The optimiser must already be built on `variables` (`optimizer.build(variables)`).

    Args:
        lr_scales: None, or `(N,)` float32 per-member factors of the learning rate (every variable stacked
            `(N, ...)`); member n then steps as `optimizer` with learning rate `lr * lr_scales[n]` would
            (`check_member_learning_rates` first).

    Returns:
        The learning rate of this step (float32 scalar), as the update used it (before `lr_scales`).
    """
    lr = tf.cast(optimizer.learning_rate, tf.float32)  # the schedule at `iterations`, before the increment
    kind = fused_kind(optimizer)
    if lr_scales is not None:
        if kind == "adam":
            return apply_member_adam(optimizer, grads, variables, lr, lr_scales)
        # SGD, momentum: lr (s g) is the step of learning rate s lr
        grads = [g * member_scale(lr_scales, v) for g, v in zip(grads, variables, strict=True)]
    if kind is None or any(v.constraint is not None for v in variables):
        optimizer.apply(grads, variables)  # evaluates the same schedule at the same step
        return lr
    if kind == "adam":
        t = tf.cast(optimizer.iterations + 1, tf.float32)
        beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
        beta_1_power, beta_2_power = tf.pow(beta_1, t), tf.pow(beta_2, t)
    for grad, variable in zip(grads, variables, strict=True):
        if kind == "adam":
            tf.raw_ops.ResourceApplyAdam(
                var=variable.value.handle,
                m=get_slot(optimizer, "momentums", variable).value.handle,
                v=get_slot(optimizer, "velocities", variable).value.handle,
                beta1_power=beta_1_power,
                beta2_power=beta_2_power,
                lr=lr,
                beta1=beta_1,
                beta2=beta_2,
                epsilon=float(optimizer.epsilon),
                grad=grad,
            )
        elif kind == "momentum":
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.value.handle,
                accum=get_slot(optimizer, "momentums", variable).value.handle,
                lr=lr,
                grad=grad,
                momentum=float(optimizer.momentum),
                use_nesterov=bool(optimizer.nesterov),
            )
        else:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.value.handle, alpha=lr, delta=grad)
    optimizer.iterations.assign_add(1)
    return lr


def apply_member_adam(optimizer: keras.optimizers.Adam, grads: list, variables: list, lr, lr_scales):
    """Keras Adam's update (the formula of `ResourceApplyAdam`) with member n's learning rate `lr * lr_scales[n]`:
    `m += (g - m)(1 - b1)`, `v += (g^2 - v)(1 - b2)`, `w -= lr s_n sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`.
    Returns `lr`."""
    t = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    alpha = lr * tf.sqrt(1 - tf.pow(beta_2, t)) / (1 - tf.pow(beta_1, t))  # ()
    for grad, variable in zip(grads, variables, strict=True):
        m, v = get_slot(optimizer, "momentums", variable), get_slot(optimizer, "velocities", variable)
        m.assign_add((grad - m) * (1 - beta_1))
        v.assign_add((tf.square(grad) - v) * (1 - beta_2))
        step = alpha * member_scale(lr_scales, variable)  # (N, 1, ...)
        variable.assign_sub(step * m / (tf.sqrt(v) + float(optimizer.epsilon)))
    optimizer.iterations.assign_add(1)
    return lr
