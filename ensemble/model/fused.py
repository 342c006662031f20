"""The fused MLP: N independent networks held as stacked weights and run as one batched computation.

Axes used throughout: `(N, B, F)` = members, batch, features.

Member `n` of a `FusedMLP` is an ordinary MLP whose layer `l` has kernel `kernels[l][n]` `(in, out)` and bias
`biases[l][n]` `(out,)`. Nothing mixes members: a forward pass is one batched matmul per layer,
`(N, B, in) @ (N, in, out) -> (N, B, out)`, so N members cost a handful of ops whatever N is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
from keras import ops

from ensemble.checks import check_int
from ensemble.data import TASKS
from ensemble.model.flops import ensemble_flops
from ensemble.model.outputs import HEAD_ACTIVATIONS, Task, outputs_to_log_probs, outputs_to_predictions

_WEIGHTS_FOLLOW = threading.local()


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Within the block (this thread), `FusedDense` layers skip their random per-member initialisation (zeros
    instead) because the caller sets every weight next, as `keras.saving.load_model` does (see `load_fused`)."""
    previous = getattr(_WEIGHTS_FOLLOW, "active", False)
    _WEIGHTS_FOLLOW.active = True
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.active = previous


def load_fused(path: str | Path, **kwargs) -> keras.Model:
    """`keras.saving.load_model(path)` of a saved `FusedMLP`, without drawing the random initial weights that the
    saved ones overwrite (one eager op per member and layer: ~0.2 s for 50 members, seconds for thousands)."""
    with weights_follow():
        return keras.saving.load_model(path, **kwargs)


def member_seed(seed: int, member: int) -> int:
    """Member `member`'s 31-bit seed in a model seeded `seed`: drawn from the seed sequence `(seed, member)`.

    Different model seeds share no member (unlike `seed + member`, where member 0 of seed 1 would be member 1
    of seed 0), and a member's seed depends only on its own index, so shards and growing pools reproduce it.
    """
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0] >> 1)


def derive_seed(member_seed: int, layer_index: int) -> int:
    """A reproducible 31-bit seed for one (member, layer) pair."""
    return int(np.random.SeedSequence([member_seed, layer_index]).generate_state(1)[0] >> 1)


@keras.saving.register_keras_serializable(package="ensemble")
class MemberwiseInitializer(keras.initializers.Initializer):
    """Initialises a stacked kernel `(N, in, out)` slice by slice, each slice with its own fans and seed.

    Keras initialisers treat a 3-D shape like a convolution kernel and get the fans wrong (the Glorot variance
    comes out ~N times too small). Here slice `n` is exactly what `initializer` with `seed=seeds[n]` gives a
    plain `Dense` kernel of shape `(in, out)`.

    Args:
        initializer: name or config of a seedable Keras initialiser, e.g. `"glorot_uniform"`.
        seeds: one int seed per member; its length is N.
    """

    def __init__(self, initializer: str | dict = "glorot_uniform", seeds: Sequence[int] = (0,)):
        if len(seeds) < 1:
            raise ValueError(
                f"Argument `seeds` must hold one seed per member (>= 1). Received: seeds={seeds}"
            )
        self.initializer = keras.initializers.serialize(keras.initializers.get(initializer))
        self.seeds = [int(s) for s in seeds]

    def member_initializer(self, n: int) -> keras.initializers.Initializer:
        config = dict(self.initializer)
        if "seed" in keras.initializers.deserialize(config).get_config():  # random ones; not e.g. "zeros"
            config["config"] = {**config.get("config", {}), "seed": self.seeds[n]}
        return keras.initializers.deserialize(config)

    def __call__(self, shape, dtype=None):
        if len(shape) != 3 or shape[0] != len(self.seeds):
            raise ValueError(
                f"MemberwiseInitializer expects a shape (N={len(self.seeds)}, in, out). Received: shape={shape}"
            )
        return ops.stack([self.member_initializer(n)(shape[1:], dtype=dtype) for n in range(shape[0])])

    def get_config(self) -> dict:
        return {"initializer": self.initializer, "seeds": self.seeds}


@keras.saving.register_keras_serializable(package="ensemble")
class FusedDense(keras.layers.Layer):
    """N independent dense layers, each applied to its own batch: `y[n] = activation(x[n] @ W[n] + b[n])`.

    Args:
        units: output width of every member.
        seeds: one seed per member; `len(seeds)` is the number of members N.
        activation: any Keras activation name.
        kernel_initializer: initialiser of one member's `(in, out)` kernel (applied per slice, see
            `MemberwiseInitializer`).

    Input shape: `(N, B, in)`. Output shape: `(N, B, units)`.
    Weights: `kernel (N, in, units)`, `bias (N, units)`.
    """

    def __init__(
        self,
        units: int,
        seeds: Sequence[int],
        activation: str | None = None,
        kernel_initializer: str | dict = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int(units, "units")
        if len(seeds) < 1:
            raise ValueError(
                f"Argument `seeds` must hold one seed per member (>= 1). Received: seeds={seeds}"
            )
        self.units = int(units)
        self.seeds = [int(s) for s in seeds]
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = kernel_initializer
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @property
    def members(self) -> int:
        return len(self.seeds)

    def build(self, input_shape):
        in_features = input_shape[-1]
        loading = getattr(_WEIGHTS_FOLLOW, "active", False)  # `weights_follow`: the values are set next
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.members, in_features, self.units),
            initializer="zeros" if loading else MemberwiseInitializer(self.kernel_initializer, self.seeds),
        )
        self.bias = self.add_weight(name="bias", shape=(self.members, self.units), initializer="zeros")

    def call(self, x):
        y = ops.matmul(x, self.kernel)  # (N, B, units)
        return self.activation(y + self.bias[:, None, :])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "seeds": self.seeds,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": self.kernel_initializer,
        }


@keras.saving.register_keras_serializable(package="ensemble")
class FusedMLP(keras.Model):
    """An ensemble of N MLPs of identical shape, differing only in their seeds, as one Keras model.

    Args:
        members: number of members N (>= 1).
        input_dim: number of input features d.
        hidden_units: width of each hidden layer, e.g. `(32, 32)`; `()` gives a linear model.
        task: `"binary"` (1 logit), `"multiclass"` (`num_classes` logits) or `"regression"` (1 output).
        num_classes: classes for `"multiclass"` (>= 2); ignored otherwise.
        activation: hidden-layer activation.
        seed: base seed; member n uses `member_seed(seed, n)` unless `member_seeds` is given.
        member_seeds: explicit per-member seeds (length N).
        kernel_initializer: initialiser of every member's kernels (fans computed per member).

    Call: `x (N, B, d) -> raw outputs (N, B, out)` (logits for classification). Use `predict_members` for
    probabilities.

    Implements `ensemble.model.member_model.MemberModel`: stacked weights are `get_weights()`, `[W_0 (N, d, H_0),
    b_0 (N, H_0), ..., W_head (N, H, out), b_head (N, out)]`; a member's are the same without the N axis.
    """

    # `get_config()` keys that the class methods below read (snapshots check a stored config for them).
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ("task", "activation", "num_classes", "input_dim")

    def __init__(
        self,
        members: int,
        input_dim: int,
        hidden_units: Sequence[int] = (32, 32),
        task: Task = "multiclass",
        num_classes: int = 2,
        activation: str = "relu",
        seed: int = 0,
        member_seeds: Sequence[int] | None = None,
        kernel_initializer: str | dict = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int(members, "members")
        check_int(input_dim, "input_dim")
        for i, units in enumerate(hidden_units):
            check_int(units, f"hidden_units[{i}]")
        if task not in TASKS:
            raise ValueError(f"Argument `task` must be one of {TASKS}. Received: task={task!r}")
        if task == "multiclass" and int(num_classes) < 2:
            raise ValueError(
                f"Argument `num_classes` must be >= 2 for multiclass. Received: num_classes={num_classes}"
            )
        if member_seeds is not None and len(member_seeds) != int(members):
            raise ValueError(
                f"Argument `member_seeds` must have one seed per member ({members}). Received {len(member_seeds)}."
            )
        keras.activations.get(activation)  # fails early on an unknown name
        self.members = int(members)
        self.input_dim = int(input_dim)
        self.hidden_units = [int(u) for u in hidden_units]
        self.task = task
        self.num_classes = int(num_classes) if task == "multiclass" else (2 if task == "binary" else 0)
        self.activation = activation
        self.seed = int(seed)
        self.member_seeds = (
            [int(s) for s in member_seeds]
            if member_seeds is not None
            else [member_seed(self.seed, n) for n in range(self.members)]
        )
        self.kernel_initializer = kernel_initializer

        self.hidden_layers = [
            FusedDense(
                units,
                seeds=[derive_seed(s, i) for s in self.member_seeds],
                activation=activation,
                kernel_initializer=kernel_initializer,
                name=f"hidden_{i}",
            )
            for i, units in enumerate(self.hidden_units)
        ]
        self.head = FusedDense(
            self.output_dim,
            seeds=[derive_seed(s, len(self.hidden_units)) for s in self.member_seeds],
            kernel_initializer=kernel_initializer,
            name="head",
        )
        self.build((self.members, None, self.input_dim))

    @classmethod
    def from_weights(cls, config: dict, weights: Sequence[np.ndarray]) -> FusedMLP:
        """A model of `config` holding `weights` (`get_weights()` order: kernel, bias per dense layer).

        Skips the random per-member initialisation that the weights would overwrite (growth, shard merges,
        stacked snapshots); `get_config()` still reports `config`'s initialiser.
        """
        with weights_follow():
            model = cls.from_config(config)
        model.set_weights(list(weights))
        return model

    @classmethod
    def stacked_config(
        cls, config: dict, weights: Sequence[np.ndarray], member_seeds: Sequence[int] | None = None
    ) -> dict:
        """`config` changed to describe a model holding the stacked `weights` `(K, ...)`: K members, the hidden
        widths of the weights (a growth round may have widened them), and `member_seeds` (None: drawn from the
        config's `seed`, as for a new model)."""
        return {
            **config,
            "members": int(weights[0].shape[0]),
            "hidden_units": [int(bias.shape[-1]) for bias in weights[1:-2:2]],
            "member_seeds": None if member_seeds is None else [int(s) for s in member_seeds],
        }

    @classmethod
    def stacked_outputs(cls, config: dict, weights: Sequence[np.ndarray], x) -> np.ndarray:
        """Raw outputs of K members held as stacked weights, on one shared batch, in NumPy (as `call`, without
        building a model: snapshots predict with any subset of their weight sets this way).

        Args:
            config: a `get_config()` (activation, input_dim); the widths come from `weights`.
            weights: stacked weights `[W_0 (K, d, H), b_0 (K, H), ..., W_head (K, H, out), b_head (K, out)]`.
            x: features `(B, d)`.

        Returns:
            Raw outputs (logits for classification) `(K, B, out)`.
        """
        x = np.asarray(x, "float32")
        if x.ndim != 2 or x.shape[1] != config["input_dim"]:
            raise ValueError(
                f"Argument `x` must have shape (B, {config['input_dim']}). Received: x.shape={x.shape}"
            )
        act = keras.activations.get(config["activation"])
        h = np.broadcast_to(x, (weights[0].shape[0], *x.shape))  # (K, B, d)
        for kernel, bias in zip(weights[:-2:2], weights[1:-2:2], strict=True):
            h = ops.convert_to_numpy(act(np.matmul(h, kernel) + bias[:, None, :]))  # (K, B, H)
        return np.matmul(h, weights[-2]) + weights[-1][:, None, :]  # (K, B, out)

    @classmethod
    def export_member(cls, config: dict, weights: Sequence[np.ndarray], name: str) -> keras.Sequential:
        """One member's weights (`member_weights` order; widths read from them) as a plain `keras.Sequential` of
        `Dense` layers, its head carrying the task's activation (see `member_model`)."""
        layers: list = [keras.Input(shape=(config["input_dim"],))]
        for i, bias in enumerate(weights[1:-2:2]):
            layers.append(
                keras.layers.Dense(bias.shape[0], activation=config["activation"], name=f"hidden_{i}")
            )
        head = HEAD_ACTIVATIONS[config["task"]]
        layers.append(keras.layers.Dense(weights[-1].shape[0], activation=head, name="head"))
        model = keras.Sequential(layers, name=name)
        model.set_weights(list(weights))
        return model

    def forward_flops(self) -> int:
        """Forward FLOPs per sample of all members (`ensemble.model.flops.ensemble_flops`)."""
        return ensemble_flops(self.input_dim, self.hidden_units, self.output_dim, self.members)

    @property
    def output_dim(self) -> int:
        """Raw outputs per member: 1 for binary and regression, C for multiclass."""
        return self.num_classes if self.task == "multiclass" else 1

    @property
    def dense_layers(self) -> list[FusedDense]:
        """Hidden layers followed by the head."""
        return [*self.hidden_layers, self.head]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, x):
        for layer in self.hidden_layers:
            x = layer(x)  # (N, B, H)
        return self.head(x)  # (N, B, out)

    def predict_members(self, x, batch_size: int = 4096, log_probs: bool = False) -> np.ndarray:
        """Per-member predictions for one shared batch.

        Args:
            x: `(B, d)` features, given to every member (or `(N, B, d)`, one batch per member).
            batch_size: rows per forward pass (memory bound only; results do not depend on it).
            log_probs: classification: return log-probabilities (log-softmax / log-sigmoid of the logits, exact
                where a probability underflows to 0), for `ensemble.evaluation.metrics`' `log_probs=True`. Regression
                predictions are returned as they are.

        Returns:
            Classification: probabilities `(N, B, C)` (binary: `C = 2`, columns `[1 - p, p]`), or their logs.
            Regression: predictions `(N, B)`.
        """
        x = np.asarray(x, dtype="float32")
        if x.ndim == 2:
            x = np.broadcast_to(x, (self.members, *x.shape))
        if x.ndim != 3 or x.shape[0] != self.members or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"Expected features of shape (B, {self.input_dim}) or ({self.members}, B, {self.input_dim}). "
                f"Received: shape={x.shape}"
            )
        chunks = [
            ops.convert_to_numpy(self(x[:, i : i + batch_size]))
            for i in range(0, max(x.shape[1], 1), batch_size)
        ]
        out = np.concatenate(chunks, axis=1) if chunks else np.zeros((self.members, 0, self.output_dim))
        if log_probs and self.task != "regression":
            return outputs_to_log_probs(out, self.task)
        return outputs_to_predictions(out, self.task)

    def member_model(self, n: int) -> keras.Sequential:
        """Member `n` as a plain `keras.Sequential` of `Dense` layers with identical predictions.

        The head carries the task's activation (sigmoid / softmax / linear), so `member_model(n).predict(x)`
        gives probabilities (binary: `(B, 1)`, the positive class) or regression outputs.
        """
        if not 0 <= n < self.members:
            raise ValueError(f"Argument `n` must be in [0, {self.members}). Received: n={n}")
        return self.export_member(self.get_config(), self.member_weights(n), name=f"member_{n}")

    def member_weights(self, n: int) -> list[np.ndarray]:
        """Member `n`'s weights in `keras.Sequential` order: `[W_0 (in, h), b_0 (h,), ..., W_head, b_head]`."""
        weights = []
        for layer in self.dense_layers:
            weights += [ops.convert_to_numpy(layer.kernel[n]), ops.convert_to_numpy(layer.bias[n])]
        return weights

    def scale_kernels(self, scales: Sequence[float]) -> None:
        """Multiply member n's kernels (every layer) by `scales[n]` `(N,)`: an initialisation scale per member
        (a sweep's `init_scale`); call it before training. Scale `s` turns the Glorot kernel of variance `v` into one
        of variance `s**2 v`; biases (zeros at initialisation) are left as they are."""
        scales = np.asarray(scales, dtype="float32")
        if scales.shape != (self.members,) or not np.all(np.isfinite(scales) & (scales > 0)):
            raise ValueError(
                f"Argument `scales` must hold one positive factor per member ({self.members}). Received: {scales}"
            )
        for layer in self.dense_layers:
            kernel = ops.convert_to_numpy(layer.kernel)  # (N, in, out)
            layer.kernel.assign(kernel * scales[:, None, None])

    def get_config(self) -> dict:
        return {
            "members": self.members,
            "input_dim": self.input_dim,
            "hidden_units": self.hidden_units,
            "task": self.task,
            "num_classes": self.num_classes,
            "activation": self.activation,
            "seed": self.seed,
            "member_seeds": self.member_seeds,
            "kernel_initializer": self.kernel_initializer,
            "name": self.name,
        }
