"""FLOP counts for dense MLPs and their ensembles, and the accuracy/cost Pareto front.

Counting convention (per sample, forward pass): a dense layer `in -> out` costs `2 * in * out` FLOPs for its
multiply-adds (one multiply and one add each) plus `out` FLOPs for adding the bias. Activations, softmax, the
ensemble combiner and data movement are not counted. An ensemble of `n` members costs `n` times one member, as in
Kondratyuk et al. (2020), where "a single large model of equal FLOPs" is the baseline that ensembles are compared to.
"""

import math
from collections.abc import Sequence

from ensemble.checks import check_int


def mlp_flops(input_dim: int, hidden_units: Sequence[int], output_dim: int) -> int:
    """FLOPs of one forward pass of one sample through a dense MLP.

    Args:
        input_dim: Number of input features.
        hidden_units: Width of each hidden layer, e.g. `(32, 32)`; empty for a linear model.
        output_dim: Number of outputs.

    Returns:
        `sum over layers (2 * in * out + out)`: multiply-adds count 2 FLOPs, bias adds 1; activations are free.
    """
    dims = [
        check_int(input_dim, "input_dim"),
        *(check_int(units, f"hidden_units[{i}]") for i, units in enumerate(hidden_units)),
        check_int(output_dim, "output_dim"),
    ]
    return sum(2 * d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:], strict=True))


def ensemble_flops(input_dim: int, hidden_units: Sequence[int], output_dim: int, members: int) -> int:
    """Forward FLOPs per sample of `members` identical MLPs: `members * mlp_flops(...)`."""
    return check_int(members, "members") * mlp_flops(input_dim, hidden_units, output_dim)


def equal_flops_width(input_dim: int, depth: int, output_dim: int, target_flops: int) -> int:
    """The largest uniform hidden width whose single MLP costs at most `target_flops`.

    Used to build "a single large model of equal FLOPs", e.g.
    `equal_flops_width(30, 2, 1, ensemble_flops(30, (32, 32), 1, members=4))`.

    Args:
        input_dim: Number of input features.
        depth: Number of hidden layers (all of the returned width).
        output_dim: Number of outputs.
        target_flops: FLOP budget per sample, see `mlp_flops`.

    Returns:
        The width `w >= 1` with `mlp_flops(input_dim, [w] * depth, output_dim) <= target_flops` maximal.
    """
    check_int(depth, "depth")

    def cost(width: int) -> int:
        return mlp_flops(input_dim, [width] * depth, output_dim)

    if target_flops < cost(1):
        raise ValueError(
            f"Argument `target_flops` must be >= {cost(1)}, the cost of width 1 at depth {depth}. "
            f"Received: target_flops={target_flops!r}"
        )
    # cost(w) = a w^2 + b w + c with a = 2 (depth - 1), b = 2 input_dim + depth + 2 output_dim, c = output_dim.
    a = 2 * (depth - 1)
    b = 2 * input_dim + depth + 2 * output_dim
    c = output_dim - target_flops
    width = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    width = max(1, int(width))
    while cost(width) > target_flops:  # correct float rounding of the closed form
        width -= 1
    while cost(width + 1) <= target_flops:
        width += 1
    return width


def training_flops(forward_flops_per_sample: int, samples: int) -> int:
    """Training FLOPs `3 * forward * samples`: the backward pass is counted as twice the forward pass.

    Args:
        forward_flops_per_sample: Forward FLOPs of one sample, e.g. from `ensemble_flops`.
        samples: Number of samples processed, i.e. epochs * training-set size.
    """
    forward = check_int(forward_flops_per_sample, "forward_flops_per_sample", minimum=0)
    return 3 * forward * check_int(samples, "samples", minimum=0)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Marks the points not dominated by another, for a cost (lower is better) and a score (higher is better).

    Point `j` dominates point `i` when `cost_j <= cost_i` and `score_j >= score_i` with one inequality strict, so
    identical points are all on the front.

    Args:
        points: `(cost, score)` pairs, e.g. `(flops, accuracy)`.

    Returns:
        One bool per point, True when it is on the Pareto front.
    """
    pairs = [(float(cost), float(score)) for cost, score in points]
    return [
        not any(
            c_j <= c_i and s_j >= s_i and (c_j < c_i or s_j > s_i)
            for j, (c_j, s_j) in enumerate(pairs)
            if j != i
        )
        for i, (c_i, s_i) in enumerate(pairs)
    ]
