"""Log axes of the study's figures carry short labels that do not overlap on narrow ranges."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt

from moelab.study.plots import _compute_axis, _loss_axis, _ratio_axis


def _labels(ax, axis: str) -> list[str]:
    """The tick labels drawn inside the visible range."""
    ax.figure.canvas.draw()
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = a.get_major_ticks() + a.get_minor_ticks()
    return [t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()]


def _drawn(xs, ys, x_axis=None, y_axis=None) -> tuple[list[str], list[str]]:
    """Labels of a log-log plot of (xs, ys) with the given axis helpers applied."""
    fig, ax = plt.subplots()
    ax.plot(xs, ys, "o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for helper, axis in ((x_axis, ax.xaxis), (y_axis, ax.yaxis)):
        if helper is not None:
            helper(axis)
    x, y = _labels(ax, "x"), _labels(ax, "y")
    plt.close(fig)
    return x, y


def test_narrow_compute_and_ratio_axes_get_short_labels():
    x, y = _drawn([3e12, 8e13], [0.55, 2.3], _compute_axis, _ratio_axis)
    assert x and all(re.fullmatch(r"\de\d+", s) for s in x), x
    assert "1e13" in x and len(x) <= 8 and len(set(x)) == len(x)
    assert {"0.75x", "1x", "2x"} <= set(y) and all(s.endswith("x") for s in y), y


def test_loss_axis_under_a_decade_shows_plain_numbers():
    _, y = _drawn([1e11, 1e14], [8.2, 4.4], y_axis=_loss_axis)
    assert {"5", "6", "8"} <= set(y), y


def test_compute_axis_within_one_round_value_labels_distinct_ticks():
    for lo, hi in [(2.2e13, 3.7e13), (1.0e13, 1.5e13), (1.01e13, 1.04e13)]:
        x, _ = _drawn([lo, hi], [4.4, 4.5], _compute_axis)
        assert len(x) >= 2 and len(set(x)) == len(x), (lo, hi, x)
        assert all(re.fullmatch(r"\d(\.\d{1,2})?e\d+", s) for s in x), x
