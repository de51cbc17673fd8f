"""The report and the README snippet on a constructed results table (CONTRACT section 2
columns): headline speedups with intervals and labels for every setting, measured bounds,
seed-to-seed spread, zero-shot accuracy and continuous score kept apart, BLiMP next to its
reference models, and the figures."""

from __future__ import annotations

import json
import math
import re

import pytest

from _study_rows import META, ZERO_SHOT_META, add_zero_shot, points, study_rows
from moelab.study.analysis.bounds import bounds_at, strongest
from moelab.study.analysis.document import to_markdown
from moelab.study.analysis.report import compose, make_figures, zero_shot_json
from moelab.study.analysis.sections import chance_verdicts
from moelab.study.analysis.snippet import BEGIN, END, readme_snippet
from moelab.study.analysis.speedup import analyse

STUDY = {"threads": 1, "fit": {"frontier": "annealed", "bootstrap": 30}}


@pytest.fixture(scope="module")
def built():
    rows = points(add_zero_shot(study_rows(seed_noise=0.003)))
    meta = {**META, **ZERO_SHOT_META, "command": "moelab study --out runs/s", "out_dir": "runs/s"}
    an = analyse(rows, meta, mode="annealed", bootstrap=30)
    return rows, meta, an


def _row(md: str, first_cell: str, after: str = "") -> list[str]:
    """The first table row starting with ``first_cell`` (after the line ``after``)."""
    md = md[md.index(after) :] if after else md
    lines = [ln for ln in md.splitlines() if ln.startswith(f"| {first_cell} |")]
    assert lines, f"no table row starting with {first_cell!r}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def _table(md: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after ``heading``, each as {column: cell}."""
    section = md[md.index(heading) :].split("\n#")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header, _, *rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [dict(zip(header, r)) for r in rows]


def _numbers(cell: str) -> list[float | None]:
    """The numbers a cell states, in order ("≥ 1.50x" -> [1.5]; "[1.2x, -]" -> [1.2, None];
    "0.30% [0.20%, 0.90%]" -> [0.3, 0.2, 0.9])."""
    return [
        None if x == "-" else float(x)
        for x in re.findall(r"-?\d+(?:\.\d+)?|(?<![\w.])-(?![\w.])", cell)
    ]


def test_headline_table_has_every_setting_with_interval_and_label(built):
    rows, meta, an = built
    md = to_markdown(compose(STUDY, rows, meta, an, {}))
    for setting in (
        "in-domain loss",
        "out-of-domain loss (mean)",
        "loss: code (in-domain)",
        "loss: prose_heldout (out-of-domain)",
    ):
        cells = _row(md, setting)
        column = {
            "in-domain loss": "loss_in_domain",
            "out-of-domain loss (mean)": "loss_out_of_domain",
            "loss: code (in-domain)": "loss/code",
            "loss: prose_heldout (out-of-domain)": "loss/prose_heldout",
        }[setting]
        h = an.metrics[column].headlines["moe8-top2"]
        assert cells[1] == f"{h.speedup:.2f}x"
        assert cells[2] == f"[{h.lo:.2f}x, {h.hi:.2f}x]"
        assert cells[3] == "interpolated (fit), dense range edge"
        ma = an.metrics[column]
        lo, hi = bounds_at(
            ma.points["dense"], ma.points["moe8-top2"], h.quality, mode=an.mode
        )  # the measured bounds at the headline's quality
        assert _numbers(cells[5]) == [round(lo.ratio, 2), round(hi.ratio, 2) if hi else None]
        # the seed spread the interval rests on, with its own 95% range (in % of the loss)
        noise = ma.seed_noise["moe8-top2"]
        spread = [100 * noise.sd, *(100 * x for x in noise.sd_interval())]
        assert _numbers(cells[6]) == pytest.approx(spread, abs=0.005), cells
    # zero-shot: accuracy and the continuous score on separate, labelled rows
    acc = _row(md, "zero-shot accuracy (mean)")
    score = _row(
        md,
        "zero-shot continuous score (mean): normalised probability of the correct candidate",
    )
    assert acc[1] == "2.00x" and score[1] == "2.00x"
    assert "seed offset of sd / sqrt(its seeds)" in md and "degrees of freedom" in md
    # the out-of-domain mean sits next to the per-domain rows in the domain table too
    ood = an.metrics["loss_out_of_domain"].headlines["moe8-top2"]
    row = _table(md, "## Speedup per domain")[1]
    assert [row[c] for c in ("domain", "in/out", "MoE family")] == [
        "out-of-domain (mean)",
        "out",
        "moe8-top2",
    ]
    assert float(row["loss t"]) == pytest.approx(ood.quality, rel=1e-3)
    assert _numbers(row["speedup"]) == [round(ood.speedup, 2)]


def test_accuracy_within_chance_gives_no_speedup_but_the_score_does(built):
    rows, meta, an = built
    acc = an.metrics["zero_shot_mean"]
    score = an.metrics["zero_shot_score_mean"]
    assert acc.chance[0] < 0.375 < acc.chance[1]  # the smallest runs' mean accuracy
    within = [p for p in acc.speedups["moe8-top2"] if p.note == "within the chance interval"]
    assert within and all(p.speedup is None for p in within)
    assert all(p.note != "within the chance interval" for p in score.speedups["moe8-top2"])
    # the smallest MoE's point: no accuracy speedup (inside chance), a score speedup
    acc_small, score_small = acc.speedups["moe8-top2"][0], score.speedups["moe8-top2"][0]
    d = math.log2(2 * 1.3e12 / 1e12)  # the smallest MoE's effective doublings
    assert acc_small.quality == pytest.approx((0.5 + 0.04 * d + 0.25 + 0.001 * d) / 2)
    assert acc_small.speedup is None
    assert score_small.c_moe == pytest.approx(1.3e12) and score_small.speedup == pytest.approx(2)
    assert acc.kind == "accuracy" and score.kind == "score"
    assert "continuous score" in score.label and "accuracy" in acc.label


def test_measured_bounds_and_seed_spread_sections(built):
    rows, meta, an = built
    md = to_markdown(compose(STUDY, rows, meta, an, {}))
    assert "## Measured bounds (no fit)" in md
    # the strongest lower and upper bound on the in-domain speedup, with what shows each
    low, up = strongest(an.metrics["loss_in_domain"].bounds["moe8-top2"])
    rows = [r for r in _table(md, "## Measured bounds") if r["setting"] == "in-domain loss"]
    assert [r["speedup"][0] for r in rows] == ["≥", "≤"]
    assert [_numbers(r["speedup"]) for r in rows] == [[round(low.ratio, 2)], [round(up.ratio, 2)]]
    assert (
        "no dense point reached it by" in rows[0]["shown by"] and low.moe_run in rows[0]["shown by"]
    )
    assert "no MoE point" in rows[1]["shown by"] and up.dense_run in rows[1]["shown by"]
    cells = _row(md, "dense-0")
    assert cells[1:3] == ["dense", "1, 2, 3"]
    spread = next(s for s in an.seed_spread if s["preset"] == "dense-0")["loss_in_domain"]
    assert _numbers(cells[3]) == [round(spread["mean"], 4), round(spread["std"], 4)]
    assert "±" in cells[3]  # mean ± sd, not two bare numbers
    assert "bitwise identical" in md and "1 thread(s)" in md


def test_blimp_table_and_chance_sentence(built):
    rows, meta, an = built
    md = to_markdown(compose(STUDY, rows, meta, an, {}))
    assert "## blimp: accuracy overall and per field" in md
    blimp = {r["model"]: r for r in _table(md, "## blimp")}
    for name, ref in ZERO_SHOT_META["tasks"]["blimp"]["reference"].items():
        row = blimp[f"{name} (reference)"]
        assert [float(row[f]) for f in ("overall", "syntax", "morphology")] == [
            ref["overall"],
            ref["field:syntax"],
            ref["field:morphology"],
        ]
    finals = [r for r in rows if r.final]
    moe2 = next(r for r in finals if r.run == "moe-2__seed=1")
    for column, task in (("overall", "blimp"), ("syntax", "blimp:field:syntax")):
        acc = moe2.evaluation.zero_shot[task]  # value with its interval over items
        assert _numbers(blimp["moe-2__seed=1"][column]) == [
            round(acc.value, 3),
            round(acc.lo, 3),
            round(acc.hi, 3),
        ]
    verdicts = chance_verdicts(finals, meta)
    assert "dense-0__seed=1" not in verdicts["blimp"]["above"]  # 0.50 [0.48, 0.52]
    assert "moe-0__seed=1" in verdicts["blimp"]["above"]
    assert verdicts["hellaswag"] == {"above": [], "below": []}
    above = re.search(
        r"Accuracy left the chance interval \(above chance\) for: blimp \(([^)]*)\)", md
    )
    assert above and above.group(1).split(", ") == verdicts["blimp"]["above"]
    assert "Within the chance interval for every run: hellaswag." in md
    data = zero_shot_json(finals, meta)
    run = data["grouped"]["blimp"]["runs"]["moe-2__seed=1"]
    syntax = moe2.evaluation.zero_shot["blimp:field:syntax"].value
    assert run["field:syntax"] == syntax
    assert run["field:syntax_ci95"] == pytest.approx([syntax - 0.025, syntax + 0.025])
    assert data["grouped"]["blimp"]["reference"]["GPT-2"]["overall"] == 0.83
    json.dumps(data)  # plain data


def test_readme_snippet_is_self_contained_markdown(built):
    rows, meta, an = built
    wall = {"wall_s": 912.0, "source": "study_time.json", "workers": 2, "threads": 1}
    text = readme_snippet(STUDY, rows, meta, an, wall)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "```\nmoelab study --out runs/s\n```" in text
    assert "Wall time 15.2 min (2 worker(s), 1 thread(s) each)" in text
    assert "`annealed` frontier" in text and "30 bootstrap resamples" in text
    for heading in (
        "#### Headline speedups",
        "#### Measured bounds (no fit)",
        "#### Seed-to-seed spread",
        "#### blimp: accuracy overall and per field",
    ):
        assert heading in text
    for setting, column in (
        ("in-domain loss", "loss_in_domain"),
        ("loss: code_heldout (out-of-domain)", "loss/code_heldout"),
        ("zero-shot accuracy (mean)", "zero_shot_mean"),
    ):
        h = an.metrics[column].headlines["moe8-top2"]
        cells = _row(text, setting)  # headline: speedup and its 95% interval
        assert _numbers(cells[1]) == [round(h.speedup, 2)]
        assert _numbers(cells[2]) == [round(h.lo, 2), round(h.hi, 2)]
    moe2 = next(r for r in rows if r.final and r.run == "moe-2__seed=1")
    run = next(r for r in _table(text, "**Runs**") if r["run"] == "moe-2__seed=1")
    assert [run["family"], run["seed"]] == ["moe8-top2", "1"]
    assert float(run["in-domain loss"]) == pytest.approx(moe2.loss_in_domain, rel=1e-3)
    assert "![" not in text  # no image paths that only resolve inside the study folder
    fallback = readme_snippet(STUDY, rows, meta, an, {"wall_s": 600.0, "source": "sum of x"})
    assert "Wall time 10.0 min (sum of x)" in fallback


def test_figures_draw_bands_per_setting(built, tmp_path):
    rows, meta, an = built
    figs = make_figures(tmp_path, rows, meta, an)
    for key in ("speedup", "speedup_domains", "domain_speedup", "loss_in_domain"):
        assert (tmp_path / figs[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
