"""`moelab presets [NAME ...] [--json]`: the model presets with parameters and training FLOPs."""

from __future__ import annotations

import json
from typing import Any

from moelab.errors import check_at_least_one
from moelab.flops import count_params, palm_flops_per_token, train_flops_per_token
from moelab.presets import (
    PRESETS,
    compute_partner,
    flops_ratio_to_partner,
    get_preset,
    moe_partners,
)

TOKENS_300B = 300e9  # every model in the paper trained on 300B tokens
_TABLE_WIDTH = 280  # wide enough for every column; the table itself stays its natural width


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these presets")
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    parser.add_argument(
        "--seq-len",
        type=int,
        help="sequence length for the FLOP counts (default: each preset's own context)",
    )


def preset_rows(names: list[str] | None = None, seq_len: int | None = None) -> list[dict[str, Any]]:
    """One plain dict per preset: the data behind both the table and ``--json``."""
    rows = []
    for name in names or list(PRESETS):
        cfg = get_preset(name)  # raises a MoelabError naming close matches for a typo
        counts = count_params(cfg)
        flops = train_flops_per_token(cfg, seq_len)
        rows.append(
            {
                "name": name,
                "arch": cfg.arch,
                "n_layers": cfg.n_layers,
                "d_model": cfg.d_model,
                "n_heads": cfg.n_heads,
                "d_ffn": cfg.d_ffn,
                "n_experts": cfg.n_experts,
                "top_k": cfg.top_k if cfg.is_moe else None,
                "moe_every": cfg.moe_every if cfg.is_moe else None,
                "vocab_size": cfg.vocab_size,
                "seq_len": cfg.max_seq_len if seq_len is None else seq_len,
                "total_params": counts.total,
                "active_params": counts.active,
                "embedding_params": counts.embedding,
                "non_embedding_params": counts.non_embedding,
                "train_flops_per_token": flops,
                "palm_flops_per_token": palm_flops_per_token(cfg, seq_len),
                "zflops_300b": flops * TOKENS_300B / 1e21,
                "partner": compute_partner(name),
                # Every MoE sharing this dense partner (a dense preset may have several).
                "moe_partners": moe_partners(name),
                # MoE only: train FLOPs per token over the dense partner's, same context.
                "flops_ratio_to_partner": flops_ratio_to_partner(name, seq_len),
                "init": cfg.init,
            }
        )
    return rows


def _params(n: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


def _gflops(x: float) -> str:
    return f"{x / 1e9:.4g}"


def _partner(r: dict[str, Any]) -> str:
    return ", ".join(r["moe_partners"]) if len(r["moe_partners"]) > 1 else r["partner"] or ""


def _ratio(r: dict[str, Any]) -> str:
    ratio = r["flops_ratio_to_partner"]
    return f"{ratio:.2f}x" if ratio is not None else ""


# The table's columns: (title, justify, the cell of a row of preset_rows).
_COLUMNS = [
    ("name", "left", lambda r: r["name"]),
    ("arch", "left", lambda r: r["arch"]),
    ("layers", "right", lambda r: str(r["n_layers"])),
    ("d_model", "right", lambda r: str(r["d_model"])),
    ("heads", "right", lambda r: str(r["n_heads"])),
    ("experts", "right", lambda r: f"{r['n_experts']} top-{r['top_k']}" if r["n_experts"] else "-"),
    ("MoE every", "right", lambda r: str(r["moe_every"]) if r["n_experts"] else "-"),
    ("init", "left", lambda r: r["init"]),
    ("total", "right", lambda r: _params(r["total_params"])),
    ("active", "right", lambda r: _params(r["active_params"])),
    ("GFLOPs/tok", "right", lambda r: _gflops(r["train_flops_per_token"])),
    ("PaLM GFLOPs/tok", "right", lambda r: _gflops(r["palm_flops_per_token"])),
    ("partner", "left", _partner),
    ("vs partner", "right", _ratio),
    ("ZFLOPs@300B", "right", lambda r: f"{r['zflops_300b']:.4g}"),
]


def run(args) -> int:
    check_at_least_one(seq_len=args.seq_len)
    rows = preset_rows(args.names, args.seq_len)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="moelab presets",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
        caption=(
            "GFLOPs/tok: training FLOPs per token in the paper's (Narayanan) accounting with "
            "activation recomputation, used for budgets and compute matching. PaLM GFLOPs/tok: "
            "6*N_active + 12*L*T*D, no recomputation, used for MFU. ZFLOPs: paper accounting "
            "at 300B tokens. Active = params one token uses (top-k experts). vs partner: an "
            "MoE's GFLOPs/tok over its dense partner's (same context). MoE every n: layers "
            "n, 2n, ... (1-based) are MoE."
        ),
    )
    for col, justify, _ in _COLUMNS:
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(*(cell(r) for _, _, cell in _COLUMNS))
    # Never squeeze columns into ellipses: a narrow terminal wraps lines instead of hiding digits.
    console = Console()
    console.width = max(console.width, _TABLE_WIDTH)
    console.print(table)
    return 0
