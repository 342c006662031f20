"""The member-model seam: what snapshots, the predictor, shards, checkpoints and FLOP counts need from a model.

A member model is N networks of one architecture held as stacked weights `(N, ...)` and run as one Keras model
(`ensemble.model.fused.FusedMLP` is the implementation; a second member type implements this protocol and is found
through Keras' serialisation registry, as `keras.saving.load_model` finds it). Nothing outside the member type's
own module reads its layers, widths or activation: it goes through these methods.

Axes: `(N, B, d)` = members, batch, features; `(K, ...)` = K weight sets stacked (e.g. selected snapshots).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import keras
import numpy as np

from ensemble.model.fused import FusedMLP, load_fused
from ensemble.model.outputs import Task


@runtime_checkable
class MemberModel(Protocol):
    """N member networks as one Keras model (see the module docstring).

    Attributes:
        members: N; member_seeds: one seed per member; task: `"binary"`, `"multiclass"` or `"regression"`;
            input_dim: d.
        CONFIG_KEYS: the `get_config()` keys the class methods read.
    """

    CONFIG_KEYS: ClassVar[tuple[str, ...]]
    members: int
    member_seeds: list[int]
    task: Task
    input_dim: int
    name: str

    @property
    def output_dim(self) -> int:
        """Raw outputs per member (logits for classification)."""

    def get_config(self) -> dict:
        """The constructor arguments."""

    def get_weights(self) -> list[np.ndarray]:
        """Stacked weights, every array `(N, ...)`: weights out."""

    @classmethod
    def from_weights(cls, config: dict, weights: Sequence[np.ndarray]) -> MemberModel:
        """A model of `config` holding the stacked `weights`: weights in."""

    @classmethod
    def stacked_config(
        cls, config: dict, weights: Sequence[np.ndarray], member_seeds: Sequence[int] | None = None
    ) -> dict:
        """`config` for a model holding the stacked `weights` `(K, ...)` (K members, shapes read from them)."""

    @classmethod
    def stacked_outputs(cls, config: dict, weights: Sequence[np.ndarray], x) -> np.ndarray:
        """Raw outputs `(K, B, out)` of stacked weights on one batch `x (B, d)`, without building a model."""

    @classmethod
    def export_member(cls, config: dict, weights: Sequence[np.ndarray], name: str) -> keras.Model:
        """One member's weights as a plain Keras model predicting probabilities (or regression outputs)."""

    def member_weights(self, n: int) -> list[np.ndarray]:
        """Member n's weights, the stacked ones without their N axis."""

    def member_model(self, n: int) -> keras.Model:
        """Member n exported (`export_member`)."""

    def predict_members(self, x, batch_size: int = 4096, log_probs: bool = False) -> np.ndarray:
        """`x (B, d)` -> probabilities `(N, B, C)` (or their logs), or regression predictions `(N, B)`."""

    def forward_flops(self) -> int:
        """Forward FLOPs per sample of all N members."""

    def save(self, filepath) -> None:
        """Keras' `.keras` file; `load_member_model` reads it."""


DEFAULT_MODEL_CLASS = FusedMLP


def model_class_name(cls: type[MemberModel]) -> str:
    """The Keras registered name of a member-model class (`"ensemble>FusedMLP"`), stored beside weights."""
    return keras.saving.get_registered_name(cls)


def find_model_class(name: str | None) -> type[MemberModel]:
    """The member-model class registered as `name` (`model_class_name`); None (files written before the name was
    stored): `FusedMLP`."""
    if name is None:
        return DEFAULT_MODEL_CLASS
    cls = keras.saving.get_registered_object(name)
    if cls is None:
        raise ValueError(
            f"No member-model class is registered as {name!r}: import the module that defines it first "
            "(`@keras.saving.register_keras_serializable`)."
        )
    return cls


def load_member_model(path: str | Path) -> MemberModel:
    """A saved member model, without drawing the random initial weights the saved ones overwrite
    (`ensemble.model.fused.load_fused`: `keras.saving.load_model` finds the class by its registered name)."""
    return load_fused(path)
