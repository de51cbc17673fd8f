"""Report sections shared by report.md and the README snippet, built only from the rows, the
table's metadata and the analysis, so both state the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from moelab.study.analysis.bounds import LOWER, MeasuredBound, bounds_at, strongest
from moelab.study.analysis.document import Bullets, Heading, Para, Table
from moelab.study.analysis.fit import EXTRAPOLATED, INTERPOLATED, MEASURED_BOUND, chance_interval
from moelab.study.analysis.speedup import (
    ZERO_SHOT,
    ZERO_SHOT_SCORE,
    Analysis,
    Headline,
    MetricAnalysis,
    domain_metric,
    seed_sd_text,
    times,
    times_interval,
)
from moelab.study.results.table import Accuracy, CurvePoint, FinalEval

REPRODUCIBILITY = (
    "Reproducibility: two trainings with the same seed and the same number of torch threads are "
    "bitwise identical; another thread count changes floating-point rounding (about 1e-8 in the "
    "weights after 40 steps) and, over a run, the losses. A difference between MoE and dense "
    "smaller than the seed-to-seed spread above is not evidence of a speedup."
)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.{digits}g}"
    return str(v)


def si(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def interval_text(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{lo:.2f}x, {hi:.2f}x]"


# ---------------------------------------------------------------------------------------------
# Settings: which metric each headline row is


def settings(an: Analysis) -> list[tuple[str, str]]:
    """(metric column, row name) for every setting with a speedup, in report order."""
    out = [("loss_in_domain", "in-domain loss")]
    if an.out_domains:
        out.append(("loss_out_of_domain", "out-of-domain loss (mean)"))
    out += [(domain_metric(d), f"loss: {d} (in-domain)") for d in an.in_domains]
    out += [(domain_metric(d), f"loss: {d} (out-of-domain)") for d in an.out_domains]
    score = "zero-shot continuous score (mean): normalised probability of the correct candidate"
    out += [(ZERO_SHOT, "zero-shot accuracy (mean)"), (ZERO_SHOT_SCORE, score)]
    return [(col, name) for col, name in out if col in an.metrics]


def quality(ma: MetricAnalysis, q: float) -> str:
    return f"{q:.3f}" if ma.kind != "loss" else f"{q:.4g}"


def no_headline_reason(ma: MetricAnalysis, moe: str, dense: str) -> str:
    if dense in ma.fit_errors:
        return f"no {dense} fit: {ma.fit_errors[dense]}"
    if moe in ma.fit_errors:
        return f"no {moe} frontier: {ma.fit_errors[moe]}"
    pts = ma.speedups.get(moe, [])
    notes = {p.note for p in pts if p.speedup is None}
    if notes == {"within the chance interval"}:
        return "accuracy within the chance interval at every quality both families measured"
    if moe not in ma.points or dense not in ma.points:
        return "a family has no points for this metric"
    if len(notes) == 1:
        return f"no speedup at any quality: {notes.pop()}"
    return "no quality measured by both families"


def label_cell(h: Headline) -> str:
    if h.label == MEASURED_BOUND:
        return f"measured bound (the fit gave {times_interval(h.fit_speedup, h.fit_lo, h.fit_hi)})"
    return h.label + (", dense range edge" if h.at_dense_edge else "")


def speedup_cell(h: Headline) -> str:
    prefix = {">=": "≥ ", "<=": "≤ "}.get(h.bound, "")
    return prefix + times(h.speedup)


def interval_cell(h: Headline, n_boot: int) -> str:
    """The interval, or why there is none where the bootstrap ran."""
    if h.lo is not None and h.hi is not None:
        return interval_text(h.lo, h.hi)
    if h.label == MEASURED_BOUND:
        return "- (a measured bound)"
    if n_boot > 0:
        return f"- (only {h.n_resamples} of {n_boot} resamples reach t)"
    return "-"


def _bounds_cell(ma: MetricAnalysis, moe: str, dense: str, q: float, mode: str) -> str:
    lo, hi = bounds_at(
        ma.points[dense], ma.points[moe], q, mode=mode, higher_is_better=ma.higher_is_better
    )
    if lo is None and hi is None:
        return "-"
    return f"[{times(lo.ratio) if lo else '-'}, {times(hi.ratio) if hi else '-'}]"


def _seed_sd_cell(ma: MetricAnalysis, moe: str) -> str:
    """The seed spread this setting's interval rests on (from the replicate runs)."""
    noise = ma.seed_noise.get(moe)
    return seed_sd_text(noise, ma.kind == "loss") if noise is not None else "-"


def headline_cells(ma: MetricAnalysis, moe: str, h: Headline) -> list[str]:
    """The headline's speedup, 95% interval, label and the quality it is quoted at."""
    interval = interval_cell(h, ma.n_bootstrap.get(moe, 0))
    return [speedup_cell(h), interval, label_cell(h), quality(ma, h.quality)]


def headline_rows(an: Analysis) -> list[list[str]]:
    rows = []
    for col, name in settings(an):
        ma = an.metrics[col]
        mode = an.mode if ma.kind == "loss" else "all"
        for moe, dense in an.partner.items():
            h = ma.headlines.get(moe)
            fam = [moe] if len(an.partner) > 1 else []
            if h is None:
                reason = no_headline_reason(ma, moe, dense)
                rows.append([name, *fam, "-", "-", reason, "-", "-", _seed_sd_cell(ma, moe)])
            else:
                bounds = _bounds_cell(ma, moe, dense, h.quality, mode)
                cells = [*headline_cells(ma, moe, h), bounds, _seed_sd_cell(ma, moe)]
                rows.append([name, *fam, *cells])
    return rows


def headline_blocks(an: Analysis, level: int = 2) -> list:
    """The headline speedup per setting: value, 95% interval, label, the quality it is quoted
    at, and the measured bounds at that quality; then how the intervals were made."""
    blocks: list = [Heading("Headline speedups", level)]
    fam = ["MoE family"] if len(an.partner) > 1 else []
    header = ["setting", *fam, "speedup", "95% interval", "label", "at quality t"]
    header += ["measured bounds at t", "seed sd [95% range]"]
    rows = headline_rows(an)
    if not rows:
        return blocks + [Para("No speedup: the study has no dense and MoE family pair.")]
    blocks.append(Table(header, rows, align_right_from=1))
    blocks.append(
        Para(
            "Speedup at quality t = c_dense(t) / c_moe(t), quoted at the best quality whose "
            "comparison is interpolated (the dense range's top edge included). Labels: "
            f"**{INTERPOLATED}**: the dense fit inverted inside the dense runs' compute range; "
            f"**{EXTRAPOLATED}**: outside it; **{MEASURED_BOUND}**: no fit, the runs' own points "
            "show it (it replaces a fit value it contradicts). Losses: lower is better; "
            "accuracy and score: higher is better."
        )
    )
    notes = []
    for col, _ in settings(an):
        for moe in an.partner:
            note = an.metrics[col].interval.get(moe)
            if note and note not in notes:
                notes.append(note)
    if notes:
        blocks.append(Para("Intervals: " + "; ".join(notes) + "."))
    return blocks


# ---------------------------------------------------------------------------------------------
# Measured bounds


def _evidence(b: MeasuredBound, ma: MetricAnalysis) -> str:
    q = quality(ma, b.quality)
    if b.kind == LOWER:
        return (
            f"{b.moe_run} reached {q} at {b.moe_compute:.3g} FLOPs; no dense point reached it by "
            f"{b.dense_compute:.3g} ({b.dense_run}: {quality(ma, b.dense_value)})"
        )
    return (
        f"{b.dense_run} reached {q} at {b.dense_compute:.3g} FLOPs; no MoE point reached it by "
        f"{b.moe_compute:.3g} ({b.moe_run}: {quality(ma, b.moe_value)})"
    )


def bounds_blocks(an: Analysis, level: int = 2) -> list:
    """The strongest lower and upper bound per setting, with the two runs that show each."""
    rows = []
    for col, name in settings(an):
        ma = an.metrics[col]
        for moe in an.partner:
            lo, hi = strongest(ma.bounds.get(moe, []))
            fam = [moe] if len(an.partner) > 1 else []
            for b, sign in ((lo, "≥"), (hi, "≤")):
                if b is not None:
                    cells = [f"{sign} {b.ratio:.2f}x", quality(ma, b.quality), _evidence(b, ma)]
                    rows.append([name, *fam, *cells])
    blocks: list = [Heading("Measured bounds (no fit)", level)]
    if not rows:
        return blocks + [
            Para("The points show no bound: the families' measured qualities do not overlap.")
        ]
    by_family = ["MoE family"] if len(an.partner) > 1 else []
    header = ["setting", *by_family, "speedup", "at quality t", "shown by"]
    blocks.append(Table(header, rows, align_right_from=len(header) - 3))
    blocks.append(
        Para(
            "Lower bound: an MoE run reached t at compute c and no dense point had reached t by "
            "c' (an annealed point under the annealed frontier), so the speedup at t is at least "
            "c'/c; the upper bound mirrors it. The strongest of each per setting; fits.json "
            "lists them all. They hold for the runs trained (another size could do better)."
        )
    )
    return blocks


# ---------------------------------------------------------------------------------------------
# Seed-to-seed spread


def _mean_sd(stats: dict[str, float] | None) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats else "-"


def spread_blocks(an: Analysis, study: dict, level: int = 2) -> list:
    blocks: list = [Heading("Seed-to-seed spread", level)]
    if not an.seed_spread:
        blocks.append(
            Para(
                "Every configuration ran with a single seed, so the report cannot tell a "
                "speedup from seed noise; add replicate seeds (grid `seed: [1, 2, 3]`)."
            )
        )
    else:
        none = dict.fromkeys(("mean", "std", "min", "max", "range_rel"), float("nan"))

        def ind(s: dict[str, Any]) -> dict[str, float]:
            return s.get("loss_in_domain", none)

        columns = [
            ("model", lambda s: str(s.get("model") or s["preset"])),
            ("family", lambda s: s["family"]),
            ("seeds", lambda s: ", ".join(str(x) for x in s["seeds"])),
            ("final in-domain loss (mean ± sd)", lambda s: _mean_sd(ind(s))),
            ("min – max", lambda s: f"{ind(s)['min']:.4f} – {ind(s)['max']:.4f}"),
            ("max-min / mean", lambda s: f"{100 * ind(s)['range_rel']:.2f}%"),
            ("out-of-domain loss (mean ± sd)", lambda s: _mean_sd(s.get("loss_out_of_domain"))),
        ]
        blocks.append(Table.of(an.seed_spread, columns, align_right_from=3))
    threads = study.get("threads")
    blocks.append(
        Para(REPRODUCIBILITY + (f" This study ran with {threads} thread(s)." if threads else ""))
    )
    return blocks


# ---------------------------------------------------------------------------------------------
# Runs table (compact: the README's)


# Columns of the tables with a row per run (final points): (header, the point's cell).
RUN = [("run", lambda p: p.run), ("family", lambda p: p.family)]
SEED = ("seed", lambda p: fmt(p.seed))
FLOPS = ("FLOPs", lambda p: f"{p.train_flops:.3g}")
LOSSES = [
    ("in-domain loss", lambda p: fmt(p.loss_in_domain)),
    ("out-of-domain loss", lambda p: fmt(p.loss_out_of_domain)),
]
TRAIN_TIME = ("train time", lambda p: f"{(p.evaluation.train_wall_s or 0) / 60:.1f} min")


def mean_columns(finals: list[CurvePoint], means: Iterable[tuple[str, str]]) -> list:
    """A column per (FinalEval attribute, header) that some run has a value of."""
    return [
        (title, lambda p, name=name: fmt(getattr(p.evaluation, name)))
        for name, title in means
        if any(getattr(p.evaluation, name) is not None for p in finals)
    ]


def runs_table(finals: list[CurvePoint], meta: dict) -> Table:
    spent = ("FLOPs spent", lambda p: f"{p.train_flops_spent:.3g}" if p.train_flops_spent else "-")
    active = ("active params", lambda p: si(p.params_active) if p.params_active else "-")
    means = ((ZERO_SHOT, "zero-shot acc. (mean)"), (ZERO_SHOT_SCORE, "zero-shot score (mean)"))
    columns = [*RUN, SEED, active, FLOPS, spent, *LOSSES, *mean_columns(finals, means)]
    return Table.of(finals, [*columns, TRAIN_TIME], align_right_from=2)


# ---------------------------------------------------------------------------------------------
# Zero-shot tasks against chance, BLiMP against its reference models


def accuracy(ev: FinalEval | None, task: str) -> float | None:
    """A final evaluation's zero-shot accuracy on ``task`` (or ``task:field:NAME``)."""
    acc = ev.zero_shot.get(task) if ev else None
    return acc.value if acc else None


def _with_interval(a: Accuracy | None) -> str:
    if a is None or a.value is None:
        return "-"
    has = a.lo is not None and a.hi is not None
    return f"{a.value:.3f}" + (f" [{a.lo:.3f}, {a.hi:.3f}]" if has else "")


def chance_verdicts(finals: list[CurvePoint], meta: dict) -> dict[str, dict[str, list[str]]]:
    """Per zero-shot task: the runs whose accuracy interval lies above chance ("above") or below
    it ("below"). The interval is the accuracy's own; without it, the binomial chance interval
    around chance from the task's item count decides."""
    out: dict[str, dict[str, list[str]]] = {}
    info = meta.get("tasks", {})
    for task in meta.get("zero_shot_tasks", []):
        chance = info.get(task, {}).get("chance")
        if chance is None:
            continue
        verdict: dict[str, list[str]] = {"above": [], "below": []}
        for p in finals:
            a = p.evaluation.zero_shot.get(task)
            if a is None or a.value is None:
                continue
            if a.lo is None or a.hi is None:
                n = info[task].get("n_items")
                if not n:
                    continue
                c_lo, c_hi = chance_interval(chance, int(n))
                above, below = a.value > c_hi, a.value < c_lo
            else:
                above, below = a.lo > chance, a.hi < chance
            if above:
                verdict["above"].append(p.run)
            elif below:
                verdict["below"].append(p.run)
        out[task] = verdict
    return out


def chance_sentence(finals: list[CurvePoint], meta: dict) -> str:
    v = chance_verdicts(finals, meta)
    if not v:
        return ""
    above = [f"{t} ({', '.join(x['above'])})" for t, x in v.items() if x["above"]]
    below = [f"{t} ({', '.join(x['below'])})" for t, x in v.items() if x["below"]]
    text = (
        "Accuracy left the chance interval (above chance) for: " + "; ".join(above) + "."
        if above
        else "Accuracy left the chance interval for no task: every run's accuracy interval "
        "contains chance."
    )
    if below:
        text += " Below chance (interval entirely under it): " + "; ".join(below) + "."
    inside = [t for t, x in v.items() if not x["above"] and not x["below"]]
    if inside and (above or below):
        text += " Within the chance interval for every run: " + ", ".join(inside) + "."
    return text


def zero_shot_blocks(finals: list[CurvePoint], meta: dict, level: int = 2) -> list:
    tasks = meta.get("zero_shot_tasks", [])
    if not tasks:
        return []
    info = meta.get("tasks", {})
    blocks: list = [Heading("Zero-shot tasks", level)]

    def accuracies(kind: str) -> Table:
        """Per run and task: the accuracy (``zero_shot``) or score (``zero_shot_score``)."""
        columns = [
            (t, lambda p, t=t: _with_interval(getattr(p.evaluation, kind).get(t))) for t in tasks
        ]
        return Table.of(finals, RUN + columns, align_right_from=2)

    blocks.append(Para("**Accuracy** (each task's primary scoring mode), 95% interval:"))
    blocks.append(accuracies("zero_shot"))
    scored = [p.evaluation.zero_shot_score.get(t) for p in finals for t in tasks]
    if any(a is not None and a.value is not None for a in scored):
        blocks.append(
            Para(
                "**Continuous score**: the normalised probability of the correct candidate "
                "(the candidates' primary-mode scores softmax-normalised over the candidates), "
                "mean over items, 95% interval:"
            )
        )
        blocks.append(accuracies("zero_shot_score"))
    items = []
    for t in tasks:
        ti = info.get(t, {})
        if not ti:
            continue
        parts = [f"accuracy chance {fmt(ti.get('chance'))}"]
        if ti.get("score_chance") is not None:
            parts.append(f"score chance {fmt(ti.get('score_chance'))}")
        parts.append(f"{ti.get('n_items')} items")
        if ti.get("mode"):
            parts.append(f"primary mode `{ti['mode']}`")
        if ti.get("split"):
            parts.append(f"split {ti['split']}")
        items.append(f"{t}: " + ", ".join(parts))
    if items:
        blocks.append(Bullets(items))
    sentence = chance_sentence(finals, meta)
    if sentence:
        blocks.append(Para(sentence))
    return blocks


def _field_names(finals: list[CurvePoint], task: str) -> list[str]:
    """The per-field breakdowns of ``task`` the runs have, as ``field:NAME``."""
    prefix = f"{task}:field:"
    names = [k for p in finals for k in p.evaluation.zero_shot]
    return list(dict.fromkeys(k[len(task) + 1 :] for k in names if k.startswith(prefix)))


def grouped_tasks(finals: list[CurvePoint], meta: dict) -> list[str]:
    """Zero-shot tasks with a per-field breakdown or reference accuracies (BLiMP)."""
    out = []
    for t in meta.get("zero_shot_tasks", []):
        ti = meta.get("tasks", {}).get(t, {})
        if ti.get("reference") or _field_names(finals, t):
            out.append(t)
    return out


def _fields(task: str, finals: list[CurvePoint], meta: dict) -> list[str]:
    ti = meta.get("tasks", {}).get(task, {})
    refs = [k for ref in (ti.get("reference") or {}).values() for k in ref]
    fields = [g for g in [*ti.get("groups_n_items", {}), *refs] if g.startswith("field:")]
    return list(dict.fromkeys(fields + _field_names(finals, task)))


def blimp_blocks(finals: list[CurvePoint], meta: dict, level: int = 2) -> list:
    """Per grouped task (BLiMP): accuracy overall and per field for every run, with intervals,
    next to the reference models' accuracies."""
    blocks: list = []
    for task in grouped_tasks(finals, meta):
        ti = meta.get("tasks", {}).get(task, {})
        fields = _fields(task, finals, meta)
        names = [f.split(":", 1)[1] for f in fields]
        keys = [task] + [f"{task}:{f}" for f in fields]
        rows = [
            [p.run, *(_with_interval(p.evaluation.zero_shot.get(k)) for k in keys)] for p in finals
        ]
        for name, ref in (ti.get("reference") or {}).items():
            cells = [fmt(ref.get(k), 3) for k in ["overall", *fields]]
            rows.append([f"{name} (reference)", *cells])
        blocks.append(Heading(f"{task}: accuracy overall and per field", level))
        blocks.append(Table(["model", "overall", *names], rows, align_right_from=1))
        groups_n = ti.get("groups_n_items") or {}
        counts = ", ".join(f"{g} {groups_n[f]}" for f, g in zip(fields, names) if f in groups_n)
        text = f"Chance {fmt(ti.get('chance'))}; {ti.get('n_items')} pairs scored"
        text += f" ({counts})" if groups_n else ""
        notes = [text + "; brackets: 95% bootstrap interval over items."]
        if ti.get("reference"):
            notes.append(
                "Reference rows: the accuracies published with the data set (mean over "
                "paradigms; fields: mean over the field's paradigms), models trained on far more "
                "text than any run here."
            )
        blocks.append(Para(" ".join(notes)))
    return blocks
