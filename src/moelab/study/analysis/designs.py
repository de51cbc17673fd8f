"""Report sections that compare MoE designs: the MoE families ranked by their speedup over
dense, and each MoE run's final load balance (MaxVio, dead experts) from its telemetry."""

from __future__ import annotations

from moelab.study.analysis.document import Heading, Para, Table
from moelab.study.analysis.sections import RUN, headline_cells
from moelab.study.analysis.speedup import Analysis
from moelab.study.results.table import CurvePoint

RANKED_BY = (("loss_in_domain", "in-domain loss"), ("loss_out_of_domain", "out-of-domain loss"))


def ranking_blocks(an: Analysis, level: int = 2) -> list:
    """With two or more MoE families: the families in order of their headline in-domain speedup
    over dense (out-of-domain breaks ties; a family without one comes last)."""
    if len(an.partner) < 2 or "loss_in_domain" not in an.metrics:
        return []
    settings = [(col, name) for col, name in RANKED_BY if col in an.metrics]

    def key(moe: str) -> tuple[float, ...]:
        hs = [an.metrics[col].headlines.get(moe) for col, _ in settings]
        return tuple(-h.speedup if h is not None else float("inf") for h in hs)

    header = ["rank", "MoE family"]
    for _, name in settings:
        header += [f"{name}: speedup", "95% interval", "label", "at quality t"]
    rows = []
    for rank, moe in enumerate(sorted(an.partner, key=key), 1):
        row = [str(rank), moe]
        for col, _ in settings:
            ma = an.metrics[col]
            h = ma.headlines.get(moe)
            row += headline_cells(ma, moe, h) if h else ["-", "-", "no headline (see above)", "-"]
        rows.append(row)
    return [
        Heading("MoE families ranked by speedup over dense", level),
        Table(header, rows, align_right_from=2),
        Para(
            "Each family's headline speedup (above) over its dense partner; the families' "
            "headlines may be quoted at different qualities t (each at its own best "
            "interpolated quality), and overlapping intervals do not rank them."
        ),
    ]


def load_blocks(finals: list[CurvePoint], level: int = 2) -> list:
    """Each MoE run's routing balance over its last logged training interval."""
    runs = [p for p in finals if p.evaluation is not None and p.evaluation.load is not None]
    if not runs:
        return []
    columns = [
        *RUN,
        ("MaxVio (mean over MoE layers)", lambda p: f"{p.evaluation.load.max_vio:.3f}"),
        ("MaxVio (worst layer)", lambda p: f"{p.evaluation.load.max_vio_max:.3f}"),
        ("dead experts (all MoE layers)", lambda p: str(p.evaluation.load.dead_experts)),
    ]
    return [
        Heading("Load balance (final training interval)", level),
        Table.of(runs, columns, align_right_from=2),
        Para(
            "From each MoE run's metrics.jsonl: the tokens routed to each expert (before "
            "capacity dropping) over the main run's last logging interval. MaxVio = the busiest "
            "expert's load over the mean load, minus 1 (0: perfectly balanced; Wang et al. "
            "2024); dead experts received no token in that interval."
        ),
    ]
