"""Issue 17 item 8 in the report: MoE families ranked by speedup over dense, and each MoE run's
final load balance (MaxVio, dead experts) read from its metrics.jsonl telemetry."""

from __future__ import annotations

import json

from _study_rows import META, points, study_rows
from moelab.study.analysis.document import to_markdown
from moelab.study.analysis.report import compose
from moelab.study.analysis.speedup import analyse
from moelab.study.results.collect import final_load, read_records
from moelab.study.results.table import from_row, to_row

STUDY = {"threads": 1, "fit": {"frontier": "annealed", "bootstrap": 20}}


def _by_hand(tokens_per_expert: list[int]) -> tuple[float, int]:
    """MaxVio and dead experts of one layer's loads, written out."""
    mean = sum(tokens_per_expert) / len(tokens_per_expert)
    return max(tokens_per_expert) / mean - 1.0, sum(1 for t in tokens_per_expert if t == 0)


def _table_lines(md: str, heading: str) -> list[list[str]]:
    section = md[md.index(heading) :].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[1:]]


def test_final_load_balance_of_every_moe_run(micro_study):
    finals = [p for p in read_records(micro_study)[0] if p.final]
    moe = [p for p in finals if p.family != "dense"]
    assert moe and all(p.evaluation.load is None for p in finals if p.family == "dense")
    md = (micro_study / "report.md").read_text()
    table = {row[0]: row for row in _table_lines(md, "## Load balance")}
    assert set(table) == {p.run for p in moe}
    for p in moe:
        rows = [json.loads(ln) for ln in (micro_study / "runs" / p.run / "metrics.jsonl").open()]
        last = [r for r in rows if r.get("moe") and not r.get("branch")][-1]
        per_layer = [_by_hand(layer["tokens_per_expert"]) for layer in last["moe"]]
        vio = [v for v, _ in per_layer]
        load = p.evaluation.load
        assert abs(load.max_vio - sum(vio) / len(vio)) < 1e-9
        assert abs(load.max_vio_max - max(vio)) < 1e-9
        assert load.dead_experts == sum(d for _, d in per_layer)
        assert table[p.run][2:] == [f"{load.max_vio:.3f}", f"{load.max_vio_max:.3f}"] + [
            str(load.dead_experts)
        ]
        # the table's columns carry it and read it back
        assert from_row(to_row(p)).evaluation.load == load
        # runs trained before the trainer wrote max_vio: the same numbers from the loads
        legacy = [
            {
                **r,
                "moe": [
                    {k: v for k, v in layer.items() if k not in ("max_vio", "dead_experts")}
                    for layer in r["moe"]
                ],
            }
            if r.get("moe")
            else r
            for r in rows
        ]
        assert final_load(legacy) == load
    assert final_load([{"step": 1, "loss": 3.0}]) is None


def test_moe_families_are_ranked_by_speedup_over_dense():
    rows = study_rows(speedup=2.0)
    # a second MoE design, four times as efficient as dense, at the same compute
    for r in study_rows(speedup=4.0):
        if r["family"] == "moe8-top2":
            preset = "g4-" + r["preset"]
            grid = {"grid.model": preset}
            rows.append(
                {
                    **r,
                    **grid,
                    "family": "moe31-top7-g4-shared1",
                    "preset": preset,
                    "run": "g4-" + r["run"],
                }
            )
    pts = points(rows)
    an = analyse(pts, META, mode="annealed", bootstrap=20)
    md = to_markdown(compose(STUDY, pts, META, an, {}))
    ranked = _table_lines(md, "## MoE families ranked by speedup over dense")
    assert [r[:2] for r in ranked] == [["1", "moe31-top7-g4-shared1"], ["2", "moe8-top2"]]
    for r in ranked:
        h = an.metrics["loss_in_domain"].headlines[r[1]]
        assert r[2] == f"{h.speedup:.2f}x" and r[3] == f"[{h.lo:.2f}x, {h.hi:.2f}x]"
    # the laws' speedups, up to the seed noise study_rows adds
    assert (
        abs(float(ranked[0][2][:-1]) / 4 - 1) < 0.15
        and abs(float(ranked[1][2][:-1]) / 2 - 1) < 0.15
    )
    # one MoE family: nothing to rank
    single = points(study_rows(speedup=2.0))
    an1 = analyse(single, META, mode="annealed", bootstrap=0)
    assert "ranked by speedup" not in to_markdown(compose(STUDY, single, META, an1, {}))
