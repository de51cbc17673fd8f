"""The per-domain speedup table lists every validation domain, saying why one has no speedup."""

from __future__ import annotations

from moelab.study.analysis import Analysis, MetricAnalysis
from moelab.study.document import Document, to_markdown
from moelab.study.fit import SpeedupPoint
from moelab.study.report import _domains


def _metric(domain: str, **kw) -> MetricAnalysis:
    return MetricAnalysis(f"loss/{domain}", domain, False, points={}, **kw)


def test_domain_without_a_dense_fit_keeps_its_row_with_the_reason():
    measured = SpeedupPoint(4.9, 2e13, 1e13, 2.0, False)
    an = Analysis(
        families=["dense", "moe8-top2"],
        dense_family="dense",
        partner={"moe8-top2": "dense"},
        metrics={
            "loss/books": _metric("books", speedups={"moe8-top2": [measured]}),
            "loss/chat": _metric("chat", fit_errors={"dense": "needs at least 3 points"}),
        },
        in_domains=["books"],
        out_domains=["chat", "docs"],
    )
    doc = Document("t")
    _domains(doc, an, figs={})
    md = to_markdown(doc)
    assert "| books | in | moe8-top2 | 4.9 | 2.00x | measured |" in md
    assert "| chat | out | - | - | - | no dense fit: needs at least 3 points |" in md
    assert "| docs | out | - | - | - | no speedup computed |" in md
