import pytest

from ensemble.model import flops


def test_mlp_flops_30_32_32_1_hand_example():
    # 30->32: 2*30*32 + 32 = 1952;  32->32: 2*32*32 + 32 = 2080;  32->1: 2*32*1 + 1 = 65  -> 4097
    assert flops.mlp_flops(30, [32, 32], 1) == 4097
    assert flops.mlp_flops(30, [], 1) == 61  # linear model: 2*30 + 1


def test_ensemble_flops_is_members_times_one_member():
    assert flops.ensemble_flops(30, (32, 32), 1, members=4) == 4 * 4097


def test_equal_flops_width_hand_example():
    # depth 2: cost(w) = 2*30*w + w + 2*w*w + w + 2*w + 1 = 2 w^2 + 64 w + 1
    # budget 4 * 4097 = 16388: cost(75) = 16051 <= 16388 < cost(76) = 16417
    assert flops.equal_flops_width(30, 2, 1, target_flops=16388) == 75
    assert flops.equal_flops_width(30, 2, 1, target_flops=4097) == 32  # exactly the 30-32-32-1 MLP
    assert flops.equal_flops_width(30, 1, 1, target_flops=4 * 63 + 1 + 62) == 4  # depth 1: cost(w) = 63 w + 1


def test_equal_flops_width_is_the_largest_within_budget():
    for depth in (1, 2, 3):
        for target in (500, 4097, 123_456):
            width = flops.equal_flops_width(10, depth, 3, target)
            assert (
                flops.mlp_flops(10, [width] * depth, 3)
                <= target
                < flops.mlp_flops(10, [width + 1] * depth, 3)
            )


def test_equal_flops_width_validates_budget():
    with pytest.raises(ValueError, match="Argument `target_flops` must be >= 67"):  # cost(1) = 2 + 64 + 1
        flops.equal_flops_width(30, 2, 1, target_flops=10)
    with pytest.raises(ValueError, match="Argument `depth` must be an int >= 1. Received: depth=0"):
        flops.equal_flops_width(30, 0, 1, target_flops=1000)


def test_training_flops_counts_backward_as_twice_forward():
    assert flops.training_flops(4097, 1000) == 3 * 4097 * 1000


def test_flops_validate_arguments():
    with pytest.raises(ValueError, match=r"Argument `hidden_units\[1\]` must be an int >= 1"):
        flops.mlp_flops(30, [32, 0], 1)
    with pytest.raises(ValueError, match="Argument `members` must be an int >= 1. Received: members=0"):
        flops.ensemble_flops(30, [32], 1, members=0)


def test_pareto_front():
    points = [(1, 0.80), (2, 0.85), (2, 0.84), (3, 0.85), (4, 0.90), (1, 0.80)]
    # (2, 0.84) and (3, 0.85) are dominated by (2, 0.85); identical points do not dominate each other
    assert flops.pareto_front(points) == [True, True, False, False, True, True]
    assert flops.pareto_front([]) == []
