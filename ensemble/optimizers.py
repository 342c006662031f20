"""Apply a Keras optimiser's update with one fused TensorFlow kernel per variable where the formula allows it.

At batch size 1 a fused step costs op dispatch, not arithmetic. Keras' Adam is a chain of ~10 small ops per
variable; TF's `ResourceApplyAdam` is one op with the same formula and reads/writes the Keras optimiser's own slot
variables, so checkpoints, growth (slot resizing) and the learning-rate schedule stay Keras'.
Any other optimiser (or option such as weight decay or EMA) falls back to `optimizer.apply`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

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


def apply_gradients(optimizer: keras.optimizers.Optimizer, grads: list, variables: list):
    """Update `variables` with `grads` exactly as `optimizer.apply(grads, variables)` would (graph-safe).

    The optimiser must already be built on `variables` (`optimizer.build(variables)`).

    Returns:
        The learning rate of this step (float32 scalar), as the update used it.
    """
    lr = tf.cast(optimizer.learning_rate, tf.float32)  # the schedule at `iterations`, before the increment
    kind = fused_kind(optimizer)
    if kind is None or any(v.constraint is not None for v in variables):
        optimizer.apply(grads, variables)  # evaluates the same schedule at the same step
        return lr
    if kind == "adam":
        t = tf.cast(optimizer.iterations + 1, tf.float32)
        beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
        beta_1_power, beta_2_power = tf.pow(beta_1, t), tf.pow(beta_2, t)
    for grad, variable in zip(grads, variables, strict=True):
        index = optimizer._get_variable_index(variable)
        if kind == "adam":
            tf.raw_ops.ResourceApplyAdam(
                var=variable.value.handle,
                m=optimizer._momentums[index].value.handle,
                v=optimizer._velocities[index].value.handle,
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
                accum=optimizer.momentums[index].value.handle,
                lr=lr,
                grad=grad,
                momentum=float(optimizer.momentum),
                use_nesterov=bool(optimizer.nesterov),
            )
        else:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.value.handle, alpha=lr, delta=grad)
    optimizer.iterations.assign_add(1)
    return lr
