"""Named model configurations: the paper's ten models and a ladder that trains on a 2-core CPU.
docs/compute.md (*Presets*) is the one account of the tables (the ``-modern`` and
``-modern-every2`` pairs included), docs/model.md (*Beyond the paper*) of the ``-g4``,
``-g4-shared`` and ``-g4-sigmoid`` designs.

Every MoE preset has a dense *compute partner* with the same width and depth (PAPER.md): the MoE
only adds experts, so its training FLOPs per token are the partner's plus one active FFN per MoE
layer (top-2). ``get_preset`` returns a fresh copy, so callers may edit what they get. The CPU
ladder (0.25M to 8M non-embedding parameters) has dropout 0: its runs see each token about once
and are far from overfitting, where dropout only slows learning.
"""

from __future__ import annotations

import dataclasses
import difflib
from types import MappingProxyType

from moelab.config import ModelConfig
from moelab.errors import MoelabError

_PAPER_VOCAB = 50257
_PAPER_SEQ = 2048
_PAPER_EXPERTS = 512
_CPU_VOCAB = 4096
_CPU_SEQ = 256
_CPU_EXPERTS = 8


def _paper(name: str, n_layers: int, d_model: int, n_heads: int, n_experts: int = 0):
    return ModelConfig(
        name=name,
        arch="paper",
        vocab_size=_PAPER_VOCAB,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_ffn=4 * d_model,
        max_seq_len=_PAPER_SEQ,
        dropout=0.1,
        attn_dropout=0.1,
        n_experts=n_experts,
        moe_every=2,
        top_k=2,
        init="fairseq",
    )


def _cpu(
    name: str,
    n_layers: int,
    d_model: int,
    n_heads: int,
    *,
    moe: bool,
    modern: bool = False,
    moe_every: int | None = None,
) -> ModelConfig:
    # SwiGLU has three FFN matrices: 8/3 d (rounded up to a multiple of 16) keeps 3 d F ~ 8 d^2.
    d_ffn = -(-(8 * d_model) // 3 // 16) * 16 if modern else 4 * d_model
    return ModelConfig(
        name=name,
        arch="modern" if modern else "paper",
        vocab_size=_CPU_VOCAB,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_ffn=d_ffn,
        max_seq_len=_CPU_SEQ,
        dropout=0.0,
        attn_dropout=0.0,
        n_experts=_CPU_EXPERTS if moe else 0,
        moe_every=moe_every if moe_every is not None else (1 if modern else 2),
        top_k=2,
        init="scaled_normal" if modern else "fairseq",
    )


# Suffix -> changes to the paper MoE, with experts of d_ffn / 4 (module docstring).
_G4_SHARED = dict(n_experts=31, top_k=7, n_shared_experts=1)
_DESIGNS = (
    ("g4", dict(n_experts=32, top_k=8)),
    ("g4-shared", _G4_SHARED),
    ("g4-sigmoid", dict(_G4_SHARED, router_score="sigmoid", balance="bias")),
)


def _build() -> tuple[dict[str, ModelConfig], dict[str, str]]:
    presets: dict[str, ModelConfig] = {}
    partner_of_moe: dict[str, str] = {}

    # (name, layers, d_model, heads) from the PAPER.md table.
    dense = [
        ("dense-125m", 12, 768, 12),
        ("dense-355m", 24, 1024, 16),
        ("dense-1.3b", 24, 2048, 32),
        ("dense-2.7b", 32, 2560, 32),
        ("dense-6.7b", 32, 4096, 32),
        ("dense-13b", 40, 5120, 40),
    ]
    for name, n_layers, d_model, n_heads in dense:
        presets[name] = _paper(name, n_layers, d_model, n_heads)
    # MoE heads are unverified in the paper's sources: we use the partner's.
    for moe_name, dense_name in [
        ("moe-15b", "dense-125m"),
        ("moe-52b", "dense-355m"),
        ("moe-207b", "dense-1.3b"),
        ("moe-1.1t", "dense-6.7b"),
    ]:
        p = presets[dense_name]
        presets[moe_name] = _paper(moe_name, p.n_layers, p.d_model, p.n_heads, _PAPER_EXPERTS)
        partner_of_moe[moe_name] = dense_name

    # CPU ladder: (size tag, layers, d_model, heads); head dim 32 throughout.
    ladder = [
        ("0.25m", 4, 64, 2),
        ("0.5m", 4, 96, 3),
        ("1m", 5, 128, 4),
        ("2m", 6, 160, 5),
        ("8m", 10, 256, 8),
    ]
    for modern in (False, True):
        suffix = "-modern" if modern else ""
        for tag, n_layers, d_model, n_heads in ladder:
            d_name, m_name = f"dense-cpu-{tag}{suffix}", f"moe-cpu-{tag}{suffix}"
            presets[d_name] = _cpu(d_name, n_layers, d_model, n_heads, moe=False, modern=modern)
            presets[m_name] = _cpu(m_name, n_layers, d_model, n_heads, moe=True, modern=modern)
            partner_of_moe[m_name] = d_name
    # The modern MoE in the paper's layout (every second layer): same dense partner.
    for tag, n_layers, d_model, n_heads in ladder:
        d_name, m_name = f"dense-cpu-{tag}-modern", f"moe-cpu-{tag}-modern-every2"
        presets[m_name] = _cpu(
            m_name, n_layers, d_model, n_heads, moe=True, modern=True, moe_every=2
        )
        partner_of_moe[m_name] = d_name
    # Today's designs at the paper's total and active expert size (granularity G = 4).
    for tag, n_layers, d_model, n_heads in ladder[1:4]:
        base = _cpu(f"moe-cpu-{tag}", n_layers, d_model, n_heads, moe=True)
        quarter = base.d_ffn // 4
        for suffix, design in _DESIGNS:
            m_name = f"moe-cpu-{tag}-{suffix}"
            presets[m_name] = dataclasses.replace(base, name=m_name, d_expert=quarter, **design)
            partner_of_moe[m_name] = f"dense-cpu-{tag}"
    return presets, partner_of_moe


_PRESETS, _PARTNER_OF_MOE = _build()
# A dense preset with several MoE partners answers with the first one defined (the every-layer
# modern MoE for dense-cpu-*-modern); moe_partners lists them all.
_MOES_OF_DENSE: dict[str, list[str]] = {}
for _moe, _dense in _PARTNER_OF_MOE.items():
    _MOES_OF_DENSE.setdefault(_dense, []).append(_moe)
_PARTNER = {**_PARTNER_OF_MOE, **{d: moes[0] for d, moes in _MOES_OF_DENSE.items()}}

PRESETS: MappingProxyType[str, ModelConfig] = MappingProxyType(_PRESETS)
"""All presets by name, read-only. Use :func:`get_preset` for a copy you may modify."""

PAPER_PRESETS: tuple[str, ...] = tuple(n for n in _PRESETS if "-cpu-" not in n)
CPU_PRESETS: tuple[str, ...] = tuple(n for n in _PRESETS if "-cpu-" in n)

# Learning rate and batch size (tokens) from PAPER.md's training section, for recipes.
PAPER_TRAINING: MappingProxyType[str, tuple[float, int]] = MappingProxyType(
    {
        "dense-125m": (6e-4, 2**19),
        "dense-355m": (3e-4, 2**19),
        "dense-1.3b": (2e-4, 2**20),
        "dense-2.7b": (1.6e-4, 2**20),
        "dense-6.7b": (1.2e-4, 2**21),
        "dense-13b": (1e-4, 2**21),
        "moe-15b": (6e-4, 2**19),
        "moe-52b": (3e-4, 2**19),
        "moe-207b": (1.6e-4, 2**20),
        "moe-1.1t": (1.2e-4, 2**21),
    }
)


def _unknown(name: str) -> MoelabError:
    close = difflib.get_close_matches(name, list(_PRESETS), n=3, cutoff=0.3)
    hint = f"did you mean {', '.join(close)}?" if close else "run 'moelab presets' for the list"
    return MoelabError(f"unknown preset {name!r}; {hint}")


def _canonical(name: str) -> str:
    if name in _PRESETS:
        return name
    if isinstance(name, str) and name.lower() in _PRESETS:
        return name.lower()
    raise _unknown(str(name))


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset's ``ModelConfig`` (names are case-insensitive)."""
    return dataclasses.replace(_PRESETS[_canonical(name)])


def compute_partner(name: str) -> str | None:
    """The other half of a compute pair: an MoE preset's dense partner (same width and depth), or
    the MoE preset a dense one is the partner of (the first, where several share it: see
    :func:`moe_partners`). ``None`` for a dense model without an MoE."""
    return _PARTNER.get(_canonical(name))


def moe_partners(name: str) -> list[str]:
    """Every MoE preset whose dense partner is ``name`` (empty for an MoE or an unpaired
    dense preset). ``dense-cpu-2m-modern`` -> ``[moe-cpu-2m-modern, moe-cpu-2m-modern-every2]``."""
    return list(_MOES_OF_DENSE.get(_canonical(name), []))


def flops_ratio_to_partner(name: str, seq_len: int | None = None) -> float | None:
    """An MoE preset's training FLOPs per token over its dense partner's (paper accounting, at
    ``seq_len`` or the preset's own context); None for a dense preset."""
    from moelab.flops import train_flops_per_token

    cfg = get_preset(name)
    partner = compute_partner(name)
    if not cfg.is_moe or partner is None:
        return None
    dense = get_preset(partner)
    return train_flops_per_token(cfg, seq_len) / train_flops_per_token(dense, seq_len)
