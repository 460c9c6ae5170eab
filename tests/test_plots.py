"""The curves of a run: a short run's few points are drawn as they are, a long run's also smoothed."""

from __future__ import annotations

import numpy as np
import pytest

from dtools.plots import MIN_SMOOTHED_POINTS, curves_figure, metric_curves


def lines_of(n: int, series: tuple[str, ...] = ("loss",)):
    import matplotlib.pyplot as plt

    steps = np.arange(1, n + 1) * 10
    fig = curves_figure(steps, {k: np.linspace(1.0, 0.1, n) for k in series}, title="t", ylabel="loss",
                        log_y=True, ylim=None, smoothing=0.9)
    lines = fig.axes[0].get_lines()
    out = [(line.get_label(), line.get_alpha(), line.get_marker()) for line in lines]
    plt.close(fig)
    return out


def test_a_short_run_shows_its_points_without_a_smoothed_line():
    # three points: smoothing with weight 0.9 would draw a line hugging the first one
    assert lines_of(3) == [("loss", None, "o")]
    assert lines_of(3, ("loss_d", "loss_g")) == [("loss_d", None, "o"), ("loss_g", None, "o")]


def test_a_long_run_shows_raw_values_faint_and_a_smoothed_line():
    assert lines_of(MIN_SMOOTHED_POINTS) == [("loss", 0.3, "None"), ("smoothed (0.9)", None, "None")]


@pytest.mark.parametrize("n", [1, 3, 50])
def test_the_file_is_written(tmp_path, n):
    metric_curves(list(range(n)), {"loss": [0.5] * n}, tmp_path / "loss.png", title="training loss")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
