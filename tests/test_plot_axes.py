"""Log axes of the study's figures: every label drawn reads back as its tick's value, labels are
distinct (none repeats or overlaps another), short, and there are enough of them to read the
scale, also on ranges narrower than a decade."""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt

from moelab.study.analysis.plots import _compute_axis, _loss_axis, _ratio_axis


def _labels(ax, axis: str) -> list[tuple[float, str]]:
    """(tick value, label) of the labelled ticks inside the visible range."""
    ax.figure.canvas.draw()
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = a.get_major_ticks() + a.get_minor_ticks()
    return [
        (t.get_loc(), t.label1.get_text())
        for t in ticks
        if lo <= t.get_loc() <= hi and t.label1.get_text()
    ]


def _drawn(xs, ys, x_axis=None, y_axis=None):
    """Labelled ticks of a log-log plot of (xs, ys) with the given axis helpers applied."""
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


def _check_readable(ticks: list[tuple[float, str]], *, at_least: int, suffix: str = "") -> None:
    """Each label names its tick's value (to the digits shown), labels are distinct and short."""
    texts = [s for _, s in ticks]
    assert len(ticks) >= at_least, ticks
    assert len(set(texts)) == len(texts), f"a label repeats: {texts}"
    for loc, text in ticks:
        assert len(text) <= 7, f"label too long to sit beside its neighbours: {text!r}"
        assert text.endswith(suffix), (text, suffix)
        value = float(text.removesuffix(suffix) if suffix else text)
        # Three significant digits at most are shown: the label is off by half a unit of them.
        assert math.isclose(value, loc, rel_tol=0.005), f"{text!r} labels a tick at {loc:.6g}"


def test_narrow_compute_and_ratio_axes_get_short_labels():
    x, y = _drawn([3e12, 8e13], [0.55, 2.3], _compute_axis, _ratio_axis)
    _check_readable(x, at_least=2)
    assert all(re.fullmatch(r"\de\d+", s) for _, s in x), x  # round values only: 2e12, 1e13
    assert len(x) <= 8, x
    _check_readable(y, at_least=3, suffix="x")
    assert any(math.isclose(loc, 1.0) for loc, _ in y), y  # parity, the speedup's reference


def test_loss_axis_under_a_decade_shows_plain_numbers():
    _, y = _drawn([1e11, 1e14], [8.2, 4.4], y_axis=_loss_axis)
    _check_readable(y, at_least=3)
    assert all(re.fullmatch(r"\d+(\.\d+)?", s) for _, s in y), y  # no 10^k notation


def test_compute_axis_within_one_round_value_labels_distinct_ticks():
    for lo, hi in [(2.2e13, 3.7e13), (1.0e13, 1.5e13), (1.01e13, 1.04e13)]:
        x, _ = _drawn([lo, hi], [4.4, 4.5], _compute_axis)
        _check_readable(x, at_least=2)
        assert all(re.fullmatch(r"\d(\.\d{1,2})?e\d+", s) for _, s in x), x
