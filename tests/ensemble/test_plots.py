import pytest

from ensemble.evaluation import plots

ROWS = [
    {"kind": "single", "width": 32, "members": 1, "flops": 4097, "accuracy": 0.90, "nll": 0.30, "ece": 0.03},
    {
        "kind": "ensemble",
        "width": 32,
        "members": 2,
        "flops": 8194,
        "accuracy": 0.92,
        "nll": 0.25,
        "ece": 0.02,
    },
    {
        "kind": "ensemble",
        "width": 32,
        "members": 4,
        "flops": 16388,
        "accuracy": 0.93,
        "nll": 0.22,
        "ece": 0.02,
    },
    {"kind": "single", "width": 75, "members": 1, "flops": 16051, "accuracy": 0.91, "nll": 0.28, "ece": 0.04},
    {
        "kind": "ensemble",
        "width": 75,
        "members": 2,
        "flops": 32102,
        "accuracy": 0.935,
        "nll": 0.2,
        "ece": 0.02,
    },
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_accuracy_vs_flops_writes_png(tmp_path):
    path = plots.plot_accuracy_vs_flops(ROWS, tmp_path / "figs" / "accuracy_vs_flops.png")
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_accuracy_vs_flops_validates_rows(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        plots.plot_accuracy_vs_flops([], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"missing \['flops'\]"):
        plots.plot_accuracy_vs_flops(
            [{"kind": "single", "width": 1, "members": 1, "accuracy": 0.5}], tmp_path / "x.png"
        )


def test_plot_learning_rate_writes_png(tmp_path):
    steps = list(range(30))
    lrs = [0.1 * (1 - (s % 10) / 10) for s in steps]
    path = plots.plot_learning_rate(steps, lrs, cycle_ends=[10, 20, 30], path=tmp_path / "lr.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="equal length"):
        plots.plot_learning_rate([0, 1], [0.1], [], tmp_path / "lr2.png")
