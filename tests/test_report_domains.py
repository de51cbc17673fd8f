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


def _table(an: Analysis) -> str:
    doc = Document("t")
    _domains(doc, an, figs={})
    return to_markdown(doc)


MEASURED = SpeedupPoint(4.9, 2e13, 1e13, 2.0, False)


def test_domain_without_a_dense_fit_keeps_its_row_with_the_reason():
    md = _table(
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
    assert "| books | in | moe8-top2 | 4.9 | 2.00x | - | interpolated (fit) |" in md
    assert "| chat | out | moe8-top2 | - | - | - | no dense fit: needs at least 3 points |" in md
    assert "| docs | out | moe8-top2 | - | - | - | no speedup computed |" in md


def test_each_moe_family_is_reported_against_its_own_dense_partner():
    # Two architectures: the paper pair fits, the modern dense fit fails on both domains.
    failed = {"modern-dense": "needs at least 3 points"}
    md = _table(
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
    assert "| books | in | moe8-top2 | 4.9 | 2.00x | - | interpolated (fit) |" in md
    reason = "no modern-dense fit: needs at least 3 points |"
    assert f"| books | in | modern-moe8-top2 | - | - | - | {reason}" in md
    assert f"| chat | out | modern-moe8-top2 | - | - | - | {reason}" in md
    assert "| chat | out | moe8-top2 | - | - | - | no speedup computed |" in md
    # the out-of-domain mean sits next to the per-domain rows, even without a value
    assert "| out-of-domain (mean) | out | moe8-top2 | - | - | - | no speedup computed |" in md
