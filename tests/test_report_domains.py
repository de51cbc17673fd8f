"""The per-domain speedup table lists every validation domain and MoE family, saying why a pair
has no speedup."""

from __future__ import annotations

from moelab.study.analysis.document import Document, to_markdown
from moelab.study.analysis.fit import SpeedupPoint
from moelab.study.analysis.report import _domains
from moelab.study.analysis.speedup import Analysis, MetricAnalysis, headline


def _metric(domain: str, **kw) -> MetricAnalysis:
    ma = MetricAnalysis(f"loss/{domain}", domain, False, points={}, **kw)
    ma.headlines = {fam: headline(pts) for fam, pts in ma.speedups.items()}
    return ma


def _table(an: Analysis) -> dict[tuple[str, str, str], dict[str, str]]:
    """The domain table's rows by (domain, in/out, MoE family), each as {column: cell}."""
    doc = Document("t")
    _domains(doc, an, figs={})
    lines = [ln for ln in to_markdown(doc).splitlines() if ln.startswith("|")]
    header, *rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = rows[1:]  # the alignment row
    return {(r[0], r[1], r[2]): dict(zip(header, r)) for r in rows}


def _number(cell: str) -> float | None:
    """A table cell's number ("2.00x" -> 2.0; "-": none)."""
    return None if cell == "-" else float(cell.removesuffix("x"))


def _measured(row: dict[str, str], quality: float, speedup: float, label: str) -> None:
    assert _number(row["loss t"]) == quality
    assert _number(row["speedup"]) == speedup
    assert row["95% interval"] == "-"  # MEASURED has no interval
    assert row["label"] == label


def _without_value(row: dict[str, str], why: str) -> None:
    assert [row[c] for c in ("loss t", "speedup", "95% interval")] == ["-", "-", "-"]
    assert row["label"] == why


MEASURED = SpeedupPoint(4.9, 2e13, 1e13, 2.0, False)


def test_domain_without_a_dense_fit_keeps_its_row_with_the_reason():
    table = _table(
        Analysis(
            families=["dense", "moe8-top2"],
            dense_family="dense",
            partner={"moe8-top2": "dense"},
            metrics={
                "loss/books": _metric("books", speedups={"moe8-top2": [MEASURED]}),
                "loss/chat": _metric("chat", fit_errors={"dense": "needs at least 3 points"}),
            },
            in_domains=["books"],
            out_domains=["chat", "docs"],
        )
    )
    _measured(table["books", "in", "moe8-top2"], 4.9, 2.0, "interpolated (fit)")
    _without_value(table["chat", "out", "moe8-top2"], "no dense fit: needs at least 3 points")
    _without_value(table["docs", "out", "moe8-top2"], "no speedup computed")


def test_each_moe_family_is_reported_against_its_own_dense_partner():
    # Two architectures: the paper pair fits, the modern dense fit fails on both domains.
    failed = {"modern-dense": "needs at least 3 points"}
    table = _table(
        Analysis(
            families=["dense", "moe8-top2", "modern-dense", "modern-moe8-top2"],
            dense_family="dense",
            partner={"moe8-top2": "dense", "modern-moe8-top2": "modern-dense"},
            metrics={
                "loss/books": _metric(
                    "books", speedups={"moe8-top2": [MEASURED]}, fit_errors=failed
                ),
                "loss/chat": _metric("chat", fit_errors=failed),
            },
            in_domains=["books"],
            out_domains=["chat"],
        )
    )
    _measured(table["books", "in", "moe8-top2"], 4.9, 2.0, "interpolated (fit)")
    reason = "no modern-dense fit: needs at least 3 points"
    _without_value(table["books", "in", "modern-moe8-top2"], reason)
    _without_value(table["chat", "out", "modern-moe8-top2"], reason)
    _without_value(table["chat", "out", "moe8-top2"], "no speedup computed")
    # the out-of-domain mean sits next to the per-domain rows, even without a value
    _without_value(table["out-of-domain (mean)", "out", "moe8-top2"], "no speedup computed")
