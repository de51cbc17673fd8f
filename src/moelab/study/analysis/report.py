"""The study report: :func:`build_report` writes results.csv/json, fits.json, plots/ and
report.md + report.html from the finished run folders alone (``moelab report DIR``), every
number read from the table or the fits computed from it (docs/study.md#fits-and-speedups).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moelab.errors import MoelabError
from moelab.io import atomic_write_json, atomic_write_text
from moelab.study.analysis import plots
from moelab.study.analysis.designs import load_blocks, ranking_blocks
from moelab.study.analysis.document import (
    Bullets,
    Code,
    Document,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)
from moelab.study.analysis.fit import EXTRAPOLATED, PowerLawFit, SpeedupPoint
from moelab.study.analysis.sections import (
    FLOPS,
    LOSSES,
    RUN,
    SEED,
    TRAIN_TIME,
    accuracy,
    blimp_blocks,
    bounds_blocks,
    chance_verdicts,
    fmt,
    grouped_tasks,
    headline_blocks,
    interval_text,
    mean_columns,
    no_headline_reason,
    si,
    speedup_cell,
    spread_blocks,
    times,
    zero_shot_blocks,
)
from moelab.study.analysis.speedup import (
    ZERO_SHOT,
    ZERO_SHOT_SCORE,
    Analysis,
    analyse,
    domain_metric,
    fits_json,
    moe_frontier_mode,
)
from moelab.study.plan.config import load_study, study_to_dict, task_label
from moelab.study.plan.layout import eval_key, run_dir, runs_dir
from moelab.study.results.collect import expert_load, read_records
from moelab.study.results.diverged import diverged_runs
from moelab.study.results.table import Accuracy, CurvePoint, FinalEval, write_results

Echo = Callable[[str], None]


def _load_study(out_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The study config as written by `moelab study` (a dict, as the report reads it) and its
    evaluation key; ({}, None) for a folder without study.yaml. A damaged file is refused."""
    f = out_dir / "study.yaml"
    if not f.exists():
        return {}, None
    try:
        cfg = load_study(f)
    except MoelabError as e:
        msg = str(e) if str(f) in str(e) else f"{f}: {e}"
        raise MoelabError(f"{msg}; {_rerun(out_dir)} to rewrite it") from None
    return study_to_dict(cfg), eval_key(cfg.eval)


def _rerun(out_dir: Path) -> str:
    return f"rerun `moelab study CONFIG --out {out_dir}`"


def _plan_order(out_dir: Path) -> list[str]:
    """The run names of plan.json, in plan order; [] without a plan. A damaged plan is
    refused."""
    f = out_dir / "plan.json"
    if not f.exists():
        return []
    try:
        names = [entry["run"] for entry in json.loads(f.read_text(encoding="utf-8"))]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise MoelabError(f"{f}: not a plan ({why}); {_rerun(out_dir)} to rewrite it") from None
    ok = [isinstance(n, str) and n not in ("", ".", "..") and "/" not in n for n in names]
    if not names or not all(ok):
        raise MoelabError(f"{f}: expected a list of run names; {_rerun(out_dir)} to rewrite it")
    return names


def build_meta(study: dict[str, Any], evals: list[dict[str, Any]]) -> dict:
    """The table's metadata: domains (the first run's), task lists, each task's item count and
    chance level (from the runs' study_eval.json), the evaluation and fit settings."""
    ev = study.get("eval", {})
    tasks: dict[str, Any] = {}
    for e in evals:
        for name, info in (e.get("tasks") or {}).items():
            tasks.setdefault(name, info)
    return {
        "study": study.get("name", "study"),
        "in_domains": list(evals[0]["in_domains"]),
        "out_domains": list(evals[0]["out_domains"]),
        "zero_shot_tasks": [task_label(t) for t in ev.get("zero_shot", [])],
        "few_shot_tasks": [task_label(t) for t in ev.get("few_shot", [])],
        "finetune_tasks": [task_label(t) for t in ev.get("finetune", [])],
        "shots": ev.get("shots"),
        "seeds": ev.get("seeds"),
        "limit": ev.get("limit"),
        "tasks": tasks,
        "fit": study.get("fit", {}),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def build_report(out_dir: str | Path, *, echo: Echo = print) -> Path:
    """Collect the finished runs of a study folder, write table, fits, plots and report;
    return the path of report.md."""
    out = Path(out_dir)
    if not out.is_dir():
        raise MoelabError(f"{out}: not a folder; give the --out folder of a `moelab study` run")
    # Everything is read and checked before anything is written: a damaged or unfinished
    # study is refused with the outputs of its last good report left as they were.
    study, key = _load_study(out)
    planned = _plan_order(out)
    points, evals = read_records(out, planned, key=key)
    if not points:
        raise MoelabError(f"{out}: no finished runs yet; run `moelab study --out {out}` first")
    meta = build_meta(study, evals)
    # Left out of the table and the fits; said, so no run silently disappears from a study.
    meta["diverged"] = diverged_runs(runs_dir(out), planned)
    meta["out_dir"] = str(out)
    cmd_file = out / "command.txt"
    meta["command"] = cmd_file.read_text(encoding="utf-8").strip() if cmd_file.is_file() else None
    finals = [p for p in points if p.final]
    _final_means(finals, meta)
    fit_cfg = study.get("fit", {})
    an = analyse(  # before the first write: a failing fit leaves the old outputs whole
        points,
        meta,
        mode=fit_cfg.get("frontier", "envelope"),
        bootstrap=int(fit_cfg.get("bootstrap", 200)),
        min_run_fraction=float(fit_cfg.get("min_run_fraction", 0.1)),
    )
    fits = fits_json(an)
    fits["zero_shot"] = zero_shot_json(finals, meta)
    fits["study_wall"] = study_wall(out, finals)
    write_results(out, points, meta)
    atomic_write_json(out / "fits.json", fits)
    figures = make_figures(out, points, meta, an)
    doc = compose(study, points, meta, an, figures)
    atomic_write_text(out / "report.md", to_markdown(doc))
    atomic_write_text(out / "report.html", to_html(doc))
    from moelab.study.analysis.snippet import readme_snippet

    atomic_write_text(out / SNIPPET, readme_snippet(study, points, meta, an, fits["study_wall"]))
    echo(f"report: {out / 'report.md'} and {out / 'report.html'}; table: {out / 'results.csv'}")
    return out / "report.md"


SNIPPET = "readme_snippet.md"


def study_wall(out: Path, finals: list[CurvePoint]) -> dict[str, Any]:
    """The study's wall time: ``study_time.json`` (written by `moelab study`) when present, else
    the sum of the runs' training and evaluation times, saying which."""
    f = out / "study_time.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        wall = float(data["wall_s"])
        last = (data.get("invocations") or [{}])[-1]
        return {
            "wall_s": wall,
            "source": "study_time.json",
            "workers": last.get("workers"),
            "threads": last.get("threads"),
        }
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    total = sum((p.evaluation.train_wall_s or 0) + (p.evaluation.eval_wall_s or 0) for p in finals)
    return {"wall_s": total, "source": "sum of per-run training and evaluation times"}


def zero_shot_json(finals: list[CurvePoint], meta: dict) -> dict[str, Any]:
    """Zero-shot facts for fits.json: which runs' accuracy intervals left chance per task, and
    the grouped tasks' (BLiMP's) accuracies per run and field next to the reference models."""
    grouped: dict[str, Any] = {}
    for task in grouped_tasks(finals, meta):
        per_run = {}
        for p in finals:
            ev = p.evaluation
            overall = ev.zero_shot.get(task) or Accuracy(None)
            score = ev.zero_shot_score.get(task) or Accuracy(None)
            entry = {
                "overall": overall.value,
                "overall_ci95": [overall.lo, overall.hi],
                "score": score.value,
            }
            for name, acc in ev.zero_shot.items():
                if not name.startswith(f"{task}:") or acc.value is None:
                    continue
                g = name[len(task) + 1 :]
                entry[g] = acc.value
                if acc.lo is not None and acc.hi is not None:
                    entry[f"{g}_ci95"] = [acc.lo, acc.hi]
            per_run[p.run] = entry
        grouped[task] = {
            "runs": per_run,
            "reference": meta.get("tasks", {}).get(task, {}).get("reference") or {},
        }
    return {"chance_verdicts": chance_verdicts(finals, meta), "grouped": grouped}


def _final_means(finals: list[CurvePoint], meta: dict) -> None:
    """The mean zero-shot accuracy and continuous score use the study's zero-shot tasks only
    (few-shot tasks are also scored at zero shots, for the gains figure, but do not enter the
    mean; BLiMP's per-field columns are breakdowns, not tasks)."""
    tasks = meta["zero_shot_tasks"]
    for p in finals:
        ev = p.evaluation
        for accs, mean in ((ev.zero_shot, ZERO_SHOT), (ev.zero_shot_score, ZERO_SHOT_SCORE)):
            vals = [accs[t].value for t in tasks if t in accs and accs[t].value is not None]
            full = vals and len(vals) == len(tasks)
            setattr(ev, mean, sum(vals) / len(vals) if full else None)
        few = [ev.few_shot.get(t) for t in meta["few_shot_tasks"]]
        few = [v for v in few if v is not None]
        ev.few_shot_mean = sum(few) / len(few) if few else None


# ---------------------------------------------------------------------------------------------
# Figures


def make_figures(out: Path, points: list[CurvePoint], meta: dict, an: Analysis) -> dict[str, str]:
    """Write the PNGs; return {figure key: path relative to the report}."""
    figs: dict[str, str] = {}
    pdir = out / "plots"
    for key in ("loss_in_domain", "loss_out_of_domain"):
        ma = an.metrics.get(key)
        if ma is None or not ma.points:
            continue
        curves = []
        for fam, pts in ma.points.items():
            fit = ma.fits.get(fam)
            cur = plots.FamilyCurve(fam, [p.compute for p in pts], [p.value for p in pts])
            if isinstance(fit, PowerLawFit):
                cur.frontier_compute = [p.compute for p in fit.points]
                cur.frontier_loss = [p.value for p in fit.points]
                cur.fitted = fit.predict
                cur.fit_label = f"{fam}: {fit.E:.3g} + {fit.A:.3g}·C^-{fit.alpha:.3g}"
            curves.append(cur)
        plots.plot_loss_vs_compute(curves, ma.label, pdir / f"{key}.png")
        figs[key] = f"plots/{key}.png"

    def panels(columns: list[str]) -> list:
        return [(_metric_short(c), speedup_series(an, c), _no_curve(an, c)) for c in columns]

    main = ("loss_in_domain", "loss_out_of_domain", ZERO_SHOT, ZERO_SHOT_SCORE)
    main = [c for c in main if c in an.metrics]
    plots.plot_speedup_panels(panels(main), pdir / "speedup.png", "MoE speedup vs dense")
    figs["speedup"] = "plots/speedup.png"
    domains = [domain_metric(d) for d in an.in_domains + an.out_domains]
    domains = [c for c in domains if c in an.metrics]
    if domains:
        title = "MoE speedup per domain"
        plots.plot_speedup_panels(panels(domains), pdir / "speedup_domains.png", title)
        figs["speedup_domains"] = "plots/speedup_domains.png"
        bars = []
        for column in ["loss_in_domain", "loss_out_of_domain"] + domains:
            ma = an.metrics.get(column)
            for fam in an.partner if ma else []:
                label = _metric_short(column) + (f" {fam}" if len(an.partner) > 1 else "")
                h = ma.headlines.get(fam)
                if h is None:
                    bars.append((label, math.nan, False, None, None))
                else:
                    bars.append((label, h.speedup, h.label == EXTRAPOLATED, h.lo, h.hi))
        title = "Headline speedup per domain"
        plots.plot_domain_bars(bars, pdir / "domain_speedup.png", title)
        figs["domain_speedup"] = "plots/domain_speedup.png"

    last = {p.run: p for p in points}  # each run's last point
    moe_runs = [p for p in last.values() if p.family in an.partner]
    if moe_runs:
        biggest = max(moe_runs, key=lambda p: p.train_flops).run
        from moelab.train.metrics import read_metrics

        load = expert_load(read_metrics(run_dir(out, biggest)))
        if load is not None:
            plots.plot_expert_load(*load, biggest, pdir / "expert_load.png")
            figs["expert_load"] = "plots/expert_load.png"
            figs["expert_load_run"] = biggest

    few_tasks = meta["few_shot_tasks"]
    if few_tasks:
        fams, zero, few, chance = _shot_table(points, an, few_tasks, meta)
        title = f"Zero-shot vs {meta['shots']}-shot (largest run per family)"
        path = pdir / "shot_gains.png"
        plots.plot_shot_gains(few_tasks, fams, zero, few, chance, path, title)
        figs["shot_gains"] = "plots/shot_gains.png"
    return figs


_SHORT = {
    "loss_in_domain": "in-domain",
    "loss_out_of_domain": "out-of-domain (mean)",
    ZERO_SHOT: "zero-shot accuracy",
    ZERO_SHOT_SCORE: "zero-shot continuous score",
}


def _metric_short(column: str) -> str:
    """A metric's name in the figures and the speedup table (a domain's loss: the domain)."""
    return _SHORT.get(column) or column.split("/", 1)[1]


def _no_curve(an: Analysis, column: str) -> str:
    """Why a setting's panel has no curve (shown in the empty panel)."""
    ma = an.metrics[column]
    return "; ".join(no_headline_reason(ma, moe, d) for moe, d in an.partner.items())


def speedup_series(an: Analysis, column: str) -> list[plots.SpeedupSeries]:
    """The figure's data for one setting: per MoE family its curve with band, bounds and
    headline."""
    ma = an.metrics[column]
    out = []
    for fam, pts in ma.speedups.items():
        got = [p for p in pts if p.speedup is not None]
        if not got:
            continue
        h = ma.headlines.get(fam)
        head = (h.c_dense, h.speedup) if h is not None and h.c_dense else None
        out.append(
            plots.SpeedupSeries(
                fam,
                [p.c_dense for p in got],
                [p.speedup for p in got],
                [p.extrapolated for p in got],
                lo=[p.lo for p in got],
                hi=[p.hi for p in got],
                lower=[p.lower_bound for p in got],
                upper=[p.upper_bound for p in got],
                headline=head,
                headline_label={">=": "≥", "<=": "≤"}.get(h.bound, "") if h else "",
            )
        )
    return out


def _largest_final(points: list[CurvePoint], family: str) -> CurvePoint | None:
    finals = [p for p in points if p.final and p.family == family]
    return max(finals, key=lambda p: p.train_flops) if finals else None


def _shot_table(points: list[CurvePoint], an: Analysis, tasks: list[str], meta: dict):
    fams = an.families
    zero: dict[str, list] = {}
    few: dict[str, list] = {}
    for fam in fams:
        p = _largest_final(points, fam)
        ev = p.evaluation if p else FinalEval()
        zero[fam] = [accuracy(ev, t) for t in tasks]
        few[fam] = [ev.few_shot.get(t) for t in tasks]
    chance = [meta["tasks"].get(t, {}).get("chance") for t in tasks]
    return fams, zero, few, chance


# ---------------------------------------------------------------------------------------------
# The document


def compose(
    study: dict, points: list[CurvePoint], meta: dict, an: Analysis, figs: dict[str, str]
) -> Document:
    doc = Document(f"moelab study report: {meta['study']}")
    finals = [p for p in points if p.final]
    _setup(doc, study, finals, meta, an)
    _table(doc, finals, meta)
    doc.add(*headline_blocks(an))
    doc.add(*ranking_blocks(an))
    doc.add(*bounds_blocks(an))
    doc.add(*spread_blocks(an, study))
    _fits(doc, an, figs)
    _speedups(doc, an, figs)
    _domains(doc, an, figs)
    doc.add(*zero_shot_blocks(finals, meta))
    _zero_shot_chance(doc, an)
    doc.add(*blimp_blocks(finals, meta))
    doc.add(*load_blocks(finals))
    _experts(doc, figs)
    _priming(doc, finals, an, meta, figs)
    _finetune(doc, finals, an, meta)
    _limits(doc, study, meta, finals)
    return doc


def _setup(doc: Document, study: dict, finals: list[CurvePoint], meta: dict, an: Analysis) -> None:
    train = (study.get("base") or {}).get("train", {})
    total_flops = sum(p.train_flops - p.upcycled_flops for p in finals)  # the dense part once
    train_wall = sum(p.evaluation.train_wall_s or 0 for p in finals)
    eval_wall = sum(p.evaluation.eval_wall_s or 0 for p in finals)
    doc.add(Heading("Setup"))
    doc.add(
        Para(
            f"{len(finals)} runs in {len(set(p.family for p in finals))} families "
            f"({', '.join(dict.fromkeys(p.family for p in finals))}), "
            f"{total_flops:.3g} training FLOPs in all (paper accounting, `moelab.flops`), "
            f"training wall time {train_wall / 60:.1f} min, evaluation {eval_wall / 60:.1f} min "
            f"(sum over runs, from the table)."
        )
    )
    items = [
        f"In-domain validation sets (the training mixture): {', '.join(meta['in_domains'])}",
        "Out-of-domain sets (never trained on): " + (", ".join(meta["out_domains"]) or "none"),
    ]
    if train:
        keys = "seq_len batch_size lr schedule warmup_steps dtype budget_tokens budget_flops"
        keys = keys.split() + ["budget_steps", "eval_points"]
        shown = ", ".join(f"{k}={train[k]}" for k in keys if train.get(k) is not None)
        items.append(f"Training settings shared by every run: {shown}")
    grid = study.get("grid") or {}
    if grid:
        values = [f"`{k}` in [{', '.join(map(_grid_label, vals))}]" for k, vals in grid.items()]
        items.append("Grid: " + "; ".join(values))
    seeds = sorted({p.seed for p in finals if p.seed is not None})
    items.append(f"Training seeds: {', '.join(str(s) for s in seeds)}")
    items.append(
        f"Fits: `fit.frontier: {an.mode}` ({FRONTIER_TEXT[an.mode]}); the MoE side of each "
        f"speedup uses its own {moe_frontier_mode(an.mode)} frontier; "
        f"{an.bootstrap} bootstrap resamples of runs for every interval"
    )
    if meta.get("command"):
        items.append(f"Command: `{meta['command']}`")
    diverged = meta.get("diverged") or {}
    if diverged:
        items.append(
            f"Diverged, left out of the table and the fits ({len(diverged)}): "
            + "; ".join(f"`{name}` ({message})" for name, message in diverged.items())
        )
    doc.add(Bullets(items))


def _grid_label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("preset") or "custom")
    return str(value)


def _table(doc: Document, finals: list[CurvePoint], meta: dict) -> None:
    doc.add(Heading("Results (final checkpoint of each run)"))
    columns = [
        *RUN,
        SEED,
        ("params", lambda p: si(p.params_total)),
        ("active", lambda p: si(p.params_active)),
        ("tokens", lambda p: si(p.tokens)),
        FLOPS,
    ]
    if any(p.train_flops_spent is not None for p in finals):
        columns.append(("FLOPs spent", lambda p: fmt(p.train_flops_spent)))
    columns += LOSSES
    domains = meta["in_domains"] + meta["out_domains"]
    columns += [(f"loss {d}", lambda p, d=d: fmt(p.loss.get(d))) for d in domains]
    means = [(ZERO_SHOT, "zero-shot mean"), (ZERO_SHOT_SCORE, "zero-shot score mean")]
    columns += mean_columns(finals, means + [("few_shot_mean", "few-shot mean")])
    columns += [
        (f"fine-tune {t}", lambda p, t=t: fmt(p.evaluation.finetune.get(t)))
        for t in meta["finetune_tasks"]
    ]
    doc.add(Table.of(finals, [*columns, TRAIN_TIME], align_right_from=2))
    doc.add(
        Para(
            "Losses are validation cross-entropy in nats per token on a fixed subset of "
            "each domain's validation split; train time is the trainer's wall time (for a "
            "resumed run, since its last resume). FLOPs: the compute of the final point's "
            "trajectory (what the fits use); FLOPs spent: everything the run trained, cooldown "
            "branches included (its cost). The full table, with every logged evaluation "
            "point of every run (`annealed` marks the points whose learning rate had decayed "
            "to its floor), is `results.csv` / `results.json`."
        )
    )


FRONTIER_TEXT = {
    "annealed": "the annealed frontier: the lower envelope of the family's annealed points "
    "(cooldown-branch ends and decayed final points, where the learning rate had reached its "
    "floor)",
    "envelope": "the compute-efficient frontier: the lower envelope of all evaluation points of "
    "the family's runs, annealed or not",
    "final": "each run's final point",
    "all": "every evaluation point of the family's runs",
}


def _interval(fit: PowerLawFit, name: str) -> str:
    iv = fit.intervals.get(name)
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def _fits(doc: Document, an: Analysis, figs: dict[str, str]) -> None:
    doc.add(Heading("Loss against compute"))
    frac = an.min_run_fraction
    doc.add(
        Para(
            "Per family, L(C) = E + A·C^-alpha is fitted (Huber loss on log L, several "
            f"starting points) to {FRONTIER_TEXT[an.mode]} (`fit.frontier: {an.mode}`), "
            "leaving out each run's points below "
            f"{frac:g} of its final compute (early training follows no power law). "
            "Brackets: 95% bootstrap intervals over runs, resampled within each preset "
            "(docs/fit.md). Residuals are log(observed) - log(fitted)."
        )
    )
    why = {
        ma.interval.get(moe, "")
        for ma in an.metrics.values()
        for moe in an.partner
        if ma.interval.get(moe, "").startswith("no interval")
    }
    if why:
        doc.add(Para("No brackets where " + "; ".join(sorted(why)) + "."))
    header = ["metric", "family", "E", "A", "alpha", "points", "runs"]
    header += ["rms residual", "max |residual|"]
    body = []
    for column in ("loss_in_domain", "loss_out_of_domain"):
        ma = an.metrics.get(column)
        if ma is None:
            continue
        for fam in an.families:
            fit = ma.fits.get(fam)
            if isinstance(fit, PowerLawFit):
                body.append(
                    [
                        ma.label,
                        fam,
                        f"{fit.E:.4g}{_interval(fit, 'E')}",
                        f"{fit.A:.3g}{_interval(fit, 'A')}",
                        f"{fit.alpha:.3g}{_interval(fit, 'alpha')}",
                        str(len(fit.points)),
                        str(fit.n_runs),
                        f"{fit.rms_residual:.3g}",
                        f"{max(abs(x) for x in fit.residuals):.3g}",
                    ]
                )
            elif fam in ma.fit_errors:
                body.append([ma.label, fam, "no fit: " + ma.fit_errors[fam]] + [""] * 6)
    doc.add(Table(header, body, align_right_from=2))
    for key in ("loss_in_domain", "loss_out_of_domain"):
        if key in figs:
            doc.add(Image(figs[key], f"{key} vs compute with fits"))


def _speedup_rows(an: Analysis, columns: list[str]) -> list[list[str]]:
    """Every point of the settings' speedup curves that has a value or a note why none."""
    body = []
    for column in (c for c in columns if c in an.metrics):
        for fam, pts in an.metrics[column].speedups.items():
            for p in (p for p in pts if p.speedup is not None or p.note):
                bounds = "-"
                if p.lower_bound is not None or p.upper_bound is not None:
                    bounds = f"[{times(p.lower_bound)}, {times(p.upper_bound)}]"
                flops = [fmt(c) if c else "-" for c in (p.c_moe, p.c_dense)]
                cells = [fmt(p.quality), *flops, times(p.speedup), interval_text(p.lo, p.hi)]
                body.append([_metric_short(column), fam, *cells, _curve_label(p), bounds, p.note])
    return body


def _curve_label(p: SpeedupPoint) -> str:
    """The point's label, saying so where a measured bound contradicts it (docs/fit.md)."""
    if not p.label:
        return "-"
    if p.contradicted == ">=":
        return f"{p.label}; contradicted: measured ≥ {p.lower_bound:.2f}x"
    if p.contradicted == "<=":
        return f"{p.label}; contradicted: measured ≤ {p.upper_bound:.2f}x"
    return p.label


def _speedups(doc: Document, an: Analysis, figs: dict[str, str]) -> None:
    doc.add(Heading("Speedup curves"))
    doc.add(
        Para(
            "Speedup at quality t = c_dense(t) / c_moe(t): the dense family's fitted curve "
            "inverted at t, over the compute at which the MoE family measured t (its "
            "frontier, interpolated between measured points in log compute and log(L - E)), at "
            "every quality the MoE frontier measured and at the dense range's top edge. Plotted "
            "against c_dense, the paper's x axis: solid where interpolated, dashed where "
            "extrapolated (c_dense outside the dense runs' compute range), the shaded band the "
            "95% bootstrap interval, triangles the measured bounds at each quality, the star "
            "the headline."
        )
    )
    if "speedup" in figs:
        doc.add(Image(figs["speedup"], "speedup factor vs dense compute"))
    if "speedup_domains" in figs:
        doc.add(Image(figs["speedup_domains"], "speedup factor per domain"))
    body = _speedup_rows(an, ["loss_in_domain", "loss_out_of_domain", ZERO_SHOT, ZERO_SHOT_SCORE])
    if body:
        header = ["setting", "MoE family", "quality t", "MoE FLOPs", "dense FLOPs", "speedup"]
        header += ["95% interval", "label", "measured bounds", "note"]
        doc.add(Table(header, body, align_right_from=2))
        doc.add(Para("Every domain's curve, with the same columns, is in `fits.json`."))
    else:
        doc.add(Para("No speedup could be computed (no dense fit, or no MoE family)."))


def _domains(doc: Document, an: Analysis, figs: dict[str, str]) -> None:
    doc.add(Heading("Speedup per domain"))
    doc.add(
        Para(
            "For each validation domain, the headline speedup (best interpolated quality, the "
            "dense range's edge included; a measured bound where it contradicts the fit), with "
            "the mean over the out-of-domain sets next to the per-domain values: a speedup on "
            "some held-out domains says little if the mean is below 1."
        )
    )
    body = []
    rows = [("loss_in_domain", "in-domain (mean)", "in")]
    if an.out_domains:
        rows.append(("loss_out_of_domain", "out-of-domain (mean)", "out"))
    rows += [(domain_metric(d), d, "in") for d in an.in_domains]
    rows += [(domain_metric(d), d, "out") for d in an.out_domains]
    for column, name, side in rows:
        ma = an.metrics.get(column)
        for fam, dense_fam in an.partner.items():
            h = ma.headlines.get(fam) if ma is not None else None
            if h is None:  # say why rather than drop the row
                err = ma.fit_errors.get(dense_fam) if ma is not None else None
                why = f"no {dense_fam} fit: {err}" if err else "no speedup computed"
                cells = ["-", "-", "-", why]
            else:
                cells = [fmt(h.quality), speedup_cell(h), interval_text(h.lo, h.hi), h.label]
            body.append([name, side, fam, *cells])
    if body:
        header = ["domain", "in/out", "MoE family", "loss t", "speedup", "95% interval", "label"]
        doc.add(Table(header, body, align_right_from=3))
    if "domain_speedup" in figs:
        doc.add(Image(figs["domain_speedup"], "speedup per domain"))


def _experts(doc: Document, figs: dict[str, str]) -> None:
    if "expert_load" not in figs:
        return
    doc.add(Heading("Expert load over training"))
    doc.add(
        Para(
            f"Share of routed tokens per expert and MoE layer at every logged step of "
            f"`{figs['expert_load_run']}` (the MoE run with the most compute), from its "
            f"metrics.jsonl."
        )
    )
    doc.add(Image(figs["expert_load"], "expert load heatmap"))


def _zero_shot_chance(doc: Document, an: Analysis) -> None:
    zma = an.metrics.get(ZERO_SHOT)
    if zma is not None and zma.chance is not None:
        doc.add(
            Para(
                f"The mean zero-shot accuracy's chance interval is "
                f"[{zma.chance[0]:.3f}, {zma.chance[1]:.3f}]; accuracies inside it give "
                f"no speedup. The continuous score gives one at every quality both families "
                f"measured."
            )
        )


def _priming(
    doc: Document, finals: list[CurvePoint], an: Analysis, meta: dict, figs: dict[str, str]
) -> None:
    fs = meta["few_shot_tasks"]
    if not fs:
        return
    doc.add(Heading("Few-shot priming"))
    columns = RUN + [(f"{t} 0-shot", lambda p, t=t: fmt(accuracy(p.evaluation, t))) for t in fs]
    columns += [
        (f"{t} {meta['shots']}-shot", lambda p, t=t: fmt(p.evaluation.few_shot.get(t))) for t in fs
    ]
    doc.add(Table.of(finals, columns, align_right_from=2))
    info = meta["tasks"]
    items = [
        f"{t}: chance {fmt(info[t].get('chance'))}, {info[t].get('n_items')} items"
        + (f", split {info[t]['split']}" if info[t].get("split") else "")
        for t in fs
        if t in info
    ]
    doc.add(Bullets(items))
    if "shot_gains" in figs:
        doc.add(Image(figs["shot_gains"], "few-shot vs zero-shot"))
        gains = []
        for fam in an.families:
            p = _largest_final(finals, fam)
            if p is None:
                continue
            for t in fs:
                z, f = accuracy(p.evaluation, t), p.evaluation.few_shot.get(t)
                if z is not None and f is not None:
                    gains.append([fam, p.run, t, fmt(z), fmt(f), f"{f - z:+.3f}"])
        if gains:
            header = ["family", "run (largest)", "task", "0-shot", f"{meta['shots']}-shot", "gain"]
            doc.add(Table(header, gains, align_right_from=3))


def _finetune(doc: Document, finals: list[CurvePoint], an: Analysis, meta: dict) -> None:
    ft = meta["finetune_tasks"]
    if not ft:
        return
    doc.add(Heading("Fine-tuning"))
    doc.add(
        Para(
            "Full-parameter fine-tuning of each run's final checkpoint (validation "
            "accuracy; the learning rate picked on a held-out part of the train split, the "
            "same grid for every model)."
        )
    )
    columns = [*RUN, ("params", lambda p: si(p.params_total))]
    columns += [(t, lambda p, t=t: fmt(p.evaluation.finetune.get(t))) for t in ft]
    doc.add(Table.of(finals, columns, align_right_from=2))


def _limits(doc: Document, study: dict, meta: dict, finals: list[CurvePoint]) -> None:
    doc.add(Heading("Limits of this study"))
    items = [
        "Tiny models and budgets next to the paper's (125M-13B dense, 300B tokens): the "
        "speedups here describe this scale only.",
    ]
    if meta["zero_shot_tasks"] or meta["few_shot_tasks"]:
        lim = meta.get("limit")
        items.append(
            f"Priming uses {'at most ' + str(lim) if lim else 'all'} items per task"
            f" (the paper: every item) and {meta.get('seeds')} few-shot seeds of "
            f"{meta.get('shots')} shots (the paper: 25 seeds)."
        )
    seeds = sorted({p.seed for p in finals if p.seed is not None})
    items.append(
        f"Training seeds used: {', '.join(map(str, seeds))}"
        + (" (one per configuration: no run-to-run noise estimate)." if len(seeds) == 1 else ".")
    )
    items.append(
        "Validation losses use a fixed subset of each validation split "
        "(`train.eval_tokens`), the same for every run."
    )
    doc.add(Bullets(items))
    doc.add(Para("Rebuild this report from the finished runs (no training):"))
    doc.add(Code(f"moelab report {meta.get('out_dir', 'DIR')}"))
