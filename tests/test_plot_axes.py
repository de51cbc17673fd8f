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


def test_narrow_compute_and_ratio_axes_get_short_labels():
    fig, ax = plt.subplots()
    ax.plot([3e12, 8e13], [0.55, 2.3])
    ax.set_xscale("log")
    ax.set_yscale("log")
    _compute_axis(ax.xaxis)
    _ratio_axis(ax.yaxis)
    x, y = _labels(ax, "x"), _labels(ax, "y")
    plt.close(fig)
    assert x and all(re.fullmatch(r"\de\d+", s) for s in x), x
    assert "1e13" in x and len(x) <= 8 and len(set(x)) == len(x)
    assert {"0.75x", "1x", "2x"} <= set(y) and all(s.endswith("x") for s in y), y


def test_loss_axis_under_a_decade_shows_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([1e11, 1e14], [8.2, 4.4])
    ax.set_xscale("log")
    ax.set_yscale("log")
    _loss_axis(ax.yaxis)
    y = _labels(ax, "y")
    plt.close(fig)
    assert {"5", "6", "8"} <= set(y), y


def test_compute_axis_within_one_round_value_labels_distinct_ticks():
    for lo, hi in [(2.2e13, 3.7e13), (1.0e13, 1.5e13), (1.01e13, 1.04e13)]:
        fig, ax = plt.subplots()
        ax.plot([lo, hi], [4.4, 4.5], "o")
        ax.set_xscale("log")
        _compute_axis(ax.xaxis)
        x = _labels(ax, "x")
        plt.close(fig)
        assert len(x) >= 2 and len(set(x)) == len(x), (lo, hi, x)
        assert all(re.fullmatch(r"\d(\.\d{1,2})?e\d+", s) for s in x), x
