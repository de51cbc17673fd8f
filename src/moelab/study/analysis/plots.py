"""The study's figures as PNG files, written atomically from plain data with matplotlib's Agg
backend (no display needed); nothing here fits.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (must precede pyplot)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from moelab.io import atomic_write_bytes  # noqa: E402

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


@dataclass
class SpeedupSeries:
    """Speedup factor against dense compute for one metric and one MoE family; optionally its
    bootstrap band (``lo``/``hi``, None where a point has no interval), the measured bounds at
    each point (``lower``/``upper``) and the headline point."""

    label: str  # e.g. "in-domain", "ood: wikitext2", "zero-shot"
    dense_compute: list[float]
    speedup: list[float]
    extrapolated: list[bool]
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)
    lower: list[float | None] = field(default_factory=list)
    upper: list[float | None] = field(default_factory=list)
    headline: tuple[float, float] | None = None  # (dense compute, speedup)
    headline_label: str = ""


@dataclass
class FamilyCurve:
    """Points of one family and, when fitted, the fitted curve to draw over them."""

    family: str
    compute: list[float]  # all evaluation points
    loss: list[float]
    frontier_compute: list[float] = field(default_factory=list)
    frontier_loss: list[float] = field(default_factory=list)
    fitted: Callable[[np.ndarray], np.ndarray] | None = None
    fit_label: str = ""


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _panels(n: int, width: float, height: float) -> tuple[Any, np.ndarray]:
    """A figure for ``n`` panels of ``width`` x ``height`` inches, three to a row, the unused
    places left blank: (figure, its axes as a grid)."""
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes


def _limits(axis: Any) -> tuple[float, float]:
    ax = axis.axes
    lo, hi = ax.get_xlim() if axis is ax.xaxis else ax.get_ylim()  # autoscaled first
    return min(lo, hi), max(lo, hi)


def _flops_label(v: float, _pos: Any = None) -> str:
    """2e13, 2.5e13, 1.04e13: at most three significant digits, no '+'."""
    if not (v > 0 and math.isfinite(v)):
        return ""
    exp = math.floor(math.log10(v))
    mant = f"{v / 10.0**exp:.3g}"
    if mant == "10":
        mant, exp = "1", exp + 1
    return f"{mant}e{exp}"


def _compute_axis(axis: Any) -> None:
    """Compact labels on a log FLOPs axis ("2e13"): over a decade or two matplotlib would label
    its minor ticks in full scientific notation, and they overlap; there the ticks are round
    values (1, 2, 5, else 1..9 x 10^k), or evenly spaced where fewer than two fall inside."""
    axis.set_major_formatter(ticker.FuncFormatter(_flops_label))
    axis.set_minor_formatter(ticker.NullFormatter())
    lo, hi = _limits(axis)
    if not (lo > 0 and math.isfinite(hi)) or math.log10(hi / lo) >= 3:
        return
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1, 2, 5), tuple(range(1, 10))):
        inside = [m * 10.0**k for k in decades for m in subs if lo <= m * 10.0**k <= hi]
        if len(inside) >= 2:
            axis.set_major_locator(ticker.FixedLocator(inside))
            return
    # Narrower still: evenly spaced ticks, labelled to three digits by _flops_label.
    axis.set_major_locator(ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))


def _loss_axis(axis: Any) -> None:
    """Plain numbers (4, 5, 6) on a log loss axis that spans less than a decade, where the
    labelled ticks are minor ones."""
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    lo, hi = _limits(axis)
    axis.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else ticker.NullFormatter())


def _ratio_axis(axis: Any) -> None:
    """Speedup factors as 0.5x, 1x, 2x ... on a log axis."""
    lo, hi = _limits(axis)
    nice = (0.1, 0.2, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100)
    inside = [v for v in nice if lo <= v <= hi]
    if len(inside) >= 2:
        axis.set_major_locator(ticker.FixedLocator(inside))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        axis.set_minor_formatter(ticker.NullFormatter())


def plot_loss_vs_compute(curves: Sequence[FamilyCurve], ylabel: str, path: Path) -> None:
    """Log-log validation loss against training FLOPs, one colour per family: every evaluation
    point faint, the frontier the fit used solid, the fitted power law as a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    all_c = [c for cur in curves for c in cur.compute if c > 0]
    for i, cur in enumerate(curves):
        col = _color(i)
        ax.scatter(cur.compute, cur.loss, s=10, color=col, alpha=0.25, linewidths=0)
        # without a fit: no points, but the family's entry in the legend
        ax.scatter(cur.frontier_compute, cur.frontier_loss, s=22, color=col, label=cur.family)
        if cur.fitted is not None and all_c:
            # Over the fitted points' range, a little beyond: not over early points it ignored.
            lo = min(cur.frontier_compute or all_c) / 1.5
            xs = np.geomspace(lo, max(all_c) * 2, 200)
            ax.plot(xs, cur.fitted(xs), color=col, lw=1.5, label=cur.fit_label or None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _compute_axis(ax.xaxis)
    _loss_axis(ax.yaxis)
    ax.set_xlabel("training FLOPs (paper accounting)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Validation loss vs training compute")
    _save(fig, path)


def _nan(values: Sequence[float | None], n: int) -> np.ndarray:
    if not values:
        return np.full(n, np.nan)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _where(mask: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays with NaN where ``mask`` is False (a line drawn with gaps)."""
    return [np.where(mask, a, np.nan) for a in arrays]


def _draw_speedup(ax: Any, series: Sequence[SpeedupSeries]) -> None:
    """Solid where interpolated, dashed where extrapolated, a shaded 95% band where the bootstrap
    gave one, measured bounds as triangles (up: lower bound, down: upper bound), the headline as
    a star."""
    for i, s in enumerate(series):
        col = _color(i)
        x = np.asarray(s.dense_compute, dtype=float)
        y = np.asarray(s.speedup, dtype=float)
        n = len(x)
        ext = np.asarray(s.extrapolated, dtype=bool)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        meas = ok & ~ext
        ax.plot(*_where(meas, x, y), "-o", ms=3, color=col, label=s.label)
        if (ok & ext).any():
            label = None if meas.any() else f"{s.label} (extrapolated)"
            ax.plot(
                *_where(ok & ext, x, y), "--", ms=2, marker="x", color=col, alpha=0.6, label=label
            )
        lo, hi = _nan(s.lo, n), _nan(s.hi, n)
        band = ok & np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
        if band.any():
            order = np.argsort(np.where(band, x, np.inf))
            order = order[band[order]]  # the band's points by compute
            ax.fill_between(x[order], lo[order], hi[order], color=col, alpha=0.18, lw=0)
        for values, marker in ((_nan(s.lower, n), "^"), (_nan(s.upper, n), "v")):
            m = ok & np.isfinite(values) & (values > 0)
            if m.any():
                ax.scatter(
                    x[m], values[m], marker=marker, s=18, color=col, alpha=0.55, linewidths=0
                )
        hx, hy = s.headline or (0, 0)
        if hx > 0 and hy > 0:
            ax.scatter(
                [hx],
                [hy],
                marker="*",
                s=90,
                color=col,
                edgecolors="black",
                linewidths=0.5,
                zorder=5,
            )
            text = f"{s.headline_label}{hy:.2f}x"
            ax.annotate(text, s.headline, fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _compute_axis(ax.xaxis)
    _ratio_axis(ax.yaxis)
    ax.grid(True, which="both", alpha=0.3)


def plot_speedup_panels(
    panels: Sequence[tuple[str, Sequence[SpeedupSeries], str]], path: Path, title: str
) -> None:
    """One panel per setting, three to a row: (title, series, why a panel has no curve)."""
    fig, axes = _panels(len(panels), 4.6, 3.6)
    for k, (ax, (name, series, why)) in enumerate(zip(axes.flat, panels)):
        if not series:
            ax.text(0.5, 0.5, textwrap.fill(why, 40), ha="center", va="center", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9)
            continue
        _draw_speedup(ax, series)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("dense FLOPs at equal quality", fontsize=8)
        if k % axes.shape[1] == 0:
            ax.set_ylabel("speedup (dense / MoE)", fontsize=8)
        if len(series) > 1:
            ax.legend(fontsize=6)
    fig.suptitle(
        title + "  (solid: interpolated, dashed: extrapolated, band: 95% bootstrap, "
        "triangles: measured bounds, star: headline)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)


def plot_domain_bars(bars: Sequence[tuple], path: Path, title: str) -> None:
    """One bar per setting, ``(label, speedup, extrapolated, lo, hi)``; hatched bars are
    extrapolated, whiskers the 95% interval where there is one, a NaN speedup left empty."""
    labels = [b[0] for b in bars]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 4.0))
    xs = np.arange(len(labels))
    for i, (_, v, ext, lo, hi) in enumerate(bars):
        if not math.isfinite(v):
            ax.text(i, 1.0, "n/a", ha="center", va="bottom", fontsize=7)
            continue
        hatch, alpha = ("//", 0.6) if ext else (None, 0.9)
        ax.bar(i, v, color=_color(1 if ext else 0), hatch=hatch, alpha=alpha)
        top = v
        if lo is not None and hi is not None:
            ax.errorbar(i, v, yerr=[[v - lo], [hi - v]], color="black", capsize=3, lw=1)
            top = hi
        ax.text(i, top, f"{v:.2f}x", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup factor")
    ax.set_title(title + "  (hatched: extrapolated; whiskers: 95%)")
    _save(fig, path)


def plot_expert_load(steps: Sequence[int], load_LSE: np.ndarray, run: str, path: Path) -> None:
    """Heatmaps of the share of routed tokens per expert over training, one panel per MoE layer.
    ``load_LSE``: (layers, logged steps, experts) token counts."""
    n_layers, _, n_experts = load_LSE.shape
    fig, axes = _panels(n_layers, 3.6, 2.8)
    share_LSE = load_LSE / np.maximum(load_LSE.sum(axis=2, keepdims=True), 1)
    vmax = max(2.0 / n_experts, float(share_LSE.max()))
    im = None
    for layer, ax in enumerate(axes.flat[:n_layers]):
        im = ax.imshow(
            share_LSE[layer].T, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=vmax
        )
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 5)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("expert", fontsize=8)
        ax.set_title(f"MoE layer {layer}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of routed tokens")
    fig.suptitle(
        f"Expert load over training: {run}  (uniform = {1 / n_experts:.3f})", fontsize=10, y=1.04
    )
    _save(fig, path)


def plot_shot_gains(
    tasks: Sequence[str],
    families: Sequence[str],
    zero: dict[str, list[float | None]],
    few: dict[str, list[float | None]],
    chance: Sequence[float | None],
    path: Path,
    title: str,
) -> None:
    """Grouped bars: for each task, zero-shot (light) and few-shot (dark) accuracy per family,
    with the task's chance level as a tick."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) + 2), 4.0))
    width = 0.8 / max(1, 2 * len(families))
    for t, _task in enumerate(tasks):
        for f, fam in enumerate(families):
            for j, (vals, alpha) in enumerate(((zero, 0.45), (few, 0.95))):
                v = vals.get(fam, [None] * len(tasks))[t]
                if v is None or not math.isfinite(v):
                    continue
                x = t - 0.4 + width * (2 * f + j + 0.5)
                label = f"{fam} {'few' if j else 'zero'}-shot" if t == 0 else None
                ax.bar(x, v, width=width, color=_color(f), alpha=alpha, label=label)
        c = chance[t]
        if c is not None:
            ax.hlines(c, t - 0.45, t + 0.45, colors="black", linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(tasks)), list(tasks), fontsize=8)
    ax.set_ylabel("accuracy (dotted: chance)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)
