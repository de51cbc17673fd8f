"""Parameter counts and FLOPs per token against the paper's table and the built model."""

from __future__ import annotations

import dataclasses

import pytest

from moelab.config import ModelConfig
from moelab.flops import (
    count_params,
    palm_flops_per_token,
    tokens_for_budget,
    train_flops,
    train_flops_per_token,
)
from moelab.presets import get_preset

# PAPER.md: total parameters (rounded as printed there).
PAPER_TOTALS = {
    "dense-125m": 123.7e6,
    "dense-355m": 353.8e6,
    "dense-1.3b": 1.312e9,
    "dense-2.7b": 2.646e9,
    "dense-6.7b": 6.650e9,
    "dense-13b": 12.84e9,
    "moe-15b": 14.61e9,
    "moe-52b": 51.83e9,
    "moe-207b": 207.1e9,
    "moe-1.1t": 1104e9,
}
# PAPER.md: training ZFLOPs at 300B tokens.
PAPER_ZFLOPS_300B = {
    "dense-125m": 0.3639,
    "dense-355m": 1.059,
    "dense-1.3b": 3.568,
    "dense-2.7b": 7.077,
    "dense-6.7b": 17.12,
    "dense-13b": 32.68,
    "moe-15b": 0.4319,
    "moe-52b": 1.301,
    "moe-207b": 4.534,
    "moe-1.1t": 22.27,
}


@pytest.mark.parametrize("name", list(PAPER_TOTALS))
def test_paper_parameter_counts_match_the_table(name):
    total = count_params(get_preset(name)).total
    assert abs(total / PAPER_TOTALS[name] - 1) < 1e-3, f"{name}: {total:,}"


def test_dense_125m_exact_count():
    counts = count_params(get_preset("dense-125m"))
    assert counts.total == 123_653_376
    assert counts.embedding == 50257 * 768
    assert counts.non_embedding == counts.total - counts.embedding
    assert counts.active == counts.total and counts.experts == 0 and counts.router == 0


@pytest.mark.parametrize("name", list(PAPER_ZFLOPS_300B))
def test_paper_zflops_at_300b_tokens(name):
    zflops = train_flops(get_preset(name), 300e9) / 1e21
    assert abs(zflops / PAPER_ZFLOPS_300B[name] - 1) < 5e-3, f"{name}: {zflops}"


@pytest.mark.parametrize(
    "dense,moe", [("dense-125m", "moe-15b"), ("dense-355m", "moe-52b"), ("dense-6.7b", "moe-1.1t")]
)
def test_reduces_exactly_to_the_paper_formula(dense, moe):
    cfg = get_preset(dense)
    l, h, s, v = cfg.n_layers, cfg.d_model, 2048, 50257
    f_dense = 96 * l * h**2 * (1 + s / (6 * h) + v / (16 * l * h))
    assert train_flops_per_token(cfg) == pytest.approx(f_dense, rel=1e-12)
    f_moe = f_dense + (l / 2) * 64 * h**2
    assert train_flops_per_token(get_preset(moe)) == pytest.approx(f_moe, rel=1e-12)


def test_seq_len_defaults_to_the_config_context():
    cfg = get_preset("dense-125m")
    short = dataclasses.replace(cfg, max_seq_len=512)
    assert train_flops_per_token(short) == train_flops_per_token(cfg, seq_len=512)
    assert palm_flops_per_token(short) == palm_flops_per_token(cfg, seq_len=512)
    # attention scores: 4 passes x 4 s d per layer
    delta = train_flops_per_token(cfg) - train_flops_per_token(short)
    assert delta == 16 * cfg.n_layers * (2048 - 512) * cfg.d_model


def test_palm_estimate_uses_active_params():
    cfg = get_preset("moe-15b")
    counts = count_params(cfg)
    expected = 6 * counts.active + 12 * 12 * 2048 * 768
    assert palm_flops_per_token(cfg) == expected
    assert counts.active < counts.total / 50  # 2 of 512 experts


def test_top_k_and_moe_frequency_generalise():
    base = ModelConfig(vocab_size=1000, n_layers=4, d_model=64, n_heads=4, d_ffn=256)
    base.max_seq_len = 128
    dense = train_flops_per_token(base)
    ffn_pass = 4 * 2 * (2 * 64 * 256)  # 4 passes x 2 FLOPs x two matrices
    for k, every in [(1, 2), (2, 2), (2, 1), (4, 1)]:
        moe = dataclasses.replace(base, n_experts=8, top_k=k, moe_every=every)
        n_moe = len(moe.moe_layer_ids())
        assert train_flops_per_token(moe) == dense + n_moe * (k - 1) * ffn_pass
        counts = count_params(moe)
        expert = 2 * 64 * 256 + 256 + 64
        assert counts.experts == n_moe * 8 * expert
        assert counts.router == n_moe * 8 * 64
        assert counts.total - counts.active == n_moe * (8 - k) * expert


def test_modern_arch_counts_and_glu_flops():
    cfg = ModelConfig(arch="modern", vocab_size=1000, n_layers=2, d_model=64, n_heads=4, d_ffn=172)
    d, f, v = 64, 172, 1000
    per_layer = 4 * d * d + 2 * d + 3 * d * f
    assert count_params(cfg).total == 2 * per_layer + d + v * d
    moe = dataclasses.replace(cfg, n_experts=4, moe_every=1, top_k=2)
    per_moe_layer = 4 * d * d + 2 * d + d * 4 + 4 * 3 * d * f
    assert count_params(moe).total == 2 * per_moe_layer + d + v * d
    assert count_params(moe).active == 2 * (per_moe_layer - 2 * 3 * d * f) + d + v * d
    s = cfg.max_seq_len
    expected = 4 * 2 * (2 * (4 * d * d + 3 * d * f) + 4 * s * d) + 3 * 2 * d * v
    assert train_flops_per_token(cfg) == expected


def test_budget_round_trip():
    cfg = get_preset("moe-cpu-2m")
    assert train_flops(cfg, tokens_for_budget(cfg, 1e13)) == pytest.approx(1e13)


def _build_model_or_skip():
    try:
        from moelab.model import build_model
    except ImportError as e:  # the model lands in a parallel change; run for real once it does
        pytest.skip(f"moelab.model.build_model is not importable yet: {e}")
    return build_model


SMALL_CONFIGS = [
    ModelConfig(vocab_size=97, n_layers=3, d_model=32, n_heads=4, d_ffn=80, max_seq_len=64),
    ModelConfig(
        vocab_size=97,
        n_layers=4,
        d_model=32,
        n_heads=4,
        d_ffn=80,
        max_seq_len=64,
        n_experts=5,
        moe_every=2,
        top_k=2,
    ),
    ModelConfig(
        arch="modern",
        vocab_size=97,
        n_layers=3,
        d_model=32,
        n_heads=4,
        d_ffn=88,
        max_seq_len=64,
    ),
    ModelConfig(
        arch="modern",
        vocab_size=97,
        n_layers=3,
        d_model=32,
        n_heads=4,
        d_ffn=88,
        max_seq_len=64,
        n_experts=4,
        moe_every=1,
        top_k=1,
    ),
]


@pytest.mark.parametrize(
    "cfg", SMALL_CONFIGS, ids=["paper-dense", "paper-moe", "modern", "mixtral"]
)
def test_count_equals_built_model(cfg):
    build_model = _build_model_or_skip()
    model = build_model(cfg.validate())
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


DESIGN_CONFIGS = {
    "fine-grained": dict(d_expert=24, top_k=3),
    "shared gated": dict(d_expert=16, n_shared_experts=2, shared_expert_gate=True, top_k=2),
    "sigmoid bias": dict(d_expert=16, n_shared_experts=1, router_score="sigmoid", balance="bias"),
}


@pytest.mark.parametrize("arch", ["paper", "modern"])
@pytest.mark.parametrize("design", list(DESIGN_CONFIGS))
def test_designs_count_equals_built_model_and_flops_follow_the_active_width(design, arch):
    """Granularity, shared experts (and their gate) and sigmoid routing (its bias is a buffer,
    not a parameter) in the counts of a built model; FLOPs grow by one expert-width FFN per
    active routed or shared expert."""
    build_model = _build_model_or_skip()
    base = ModelConfig(
        arch=arch, vocab_size=97, n_layers=2, d_model=32, n_heads=4, d_ffn=64, max_seq_len=16
    )
    cfg = dataclasses.replace(base, n_experts=4, moe_every=1, **DESIGN_CONFIGS[design])
    model = build_model(cfg.validate())
    counts = count_params(cfg)
    params = dict(model.named_parameters())
    assert counts.total == sum(p.numel() for p in params.values())
    shared = sum(p.numel() for n, p in params.items() if ".shared" in n)
    assert counts.shared_experts == shared == (2 * _moe_shared(cfg) if shared else 0)
    assert counts.experts == sum(p.numel() for n, p in params.items() if ".experts." in n)
    w, n_mats = cfg.expert_width, 3 if arch == "modern" else 2
    active_ffn = 4 * 2 * n_mats * 32 * w * (cfg.top_k + cfg.n_shared_experts)
    dense_ffn = 4 * 2 * n_mats * 32 * 64
    assert train_flops_per_token(cfg) == train_flops_per_token(base) + 2 * (active_ffn - dense_ffn)
    expert = sum(p[0].numel() for n, p in params.items() if ".0.ffn.experts." in n)
    assert counts.total - counts.active == 2 * (cfg.n_experts - cfg.top_k) * expert


def _moe_shared(cfg: ModelConfig) -> int:
    w, d = cfg.n_shared_experts * cfg.expert_width, cfg.d_model
    ffn = 3 * d * w if cfg.arch == "modern" else 2 * d * w + w + d
    return ffn + (d if cfg.shared_expert_gate else 0)
