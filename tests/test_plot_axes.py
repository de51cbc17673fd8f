"""Log axes of the study's figures carry short labels that do not overlap on narrow ranges."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt

from moelab.study.plots import _compute_axis, _loss_axis, _ratio_axis


def _labels(ax, axis: str) -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    minor = ax.get_xticklabels(minor=True) if axis == "x" else ax.get_yticklabels(minor=True)
    return [t.get_text() for t in ticks + minor if t.get_text()]


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
    assert "1e13" in x and len(x) <= 8
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
