"""The one integer check behind every `Argument ... must be an int >= m` of the library.

An int is a Python or NumPy integer and not a bool (`True` is an `int` to Python, never a count or a seed here);
floats such as `2.0` are rejected rather than truncated.
"""

from __future__ import annotations

from numbers import Integral


def is_int(value, minimum: int | None = None) -> bool:
    """Whether `value` is an integer (Python or NumPy, not a bool), and `>= minimum` when one is given."""
    return (
        isinstance(value, Integral) and not isinstance(value, bool) and (minimum is None or value >= minimum)
    )


def check_int(value, name: str, minimum: int = 1) -> int:
    """`value` as an int after checking it is an integer `>= minimum`.

    Raises:
        ValueError: ``"Argument `name` must be an int >= minimum. Received: name=value"``.
    """
    if not is_int(value, minimum):
        raise ValueError(f"Argument `{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)
