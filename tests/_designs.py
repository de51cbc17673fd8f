"""The small MoE config the design tests (tests/test_designs_*.py) build their layers from."""

from __future__ import annotations

from moelab.config import ModelConfig


def design_cfg(**changes) -> ModelConfig:
    """Two paper-arch layers, each an MoE of 4 top-2 experts, dropless (routing of a token does
    not depend on its batch), no dropout; ``changes``: other ModelConfig values."""
    base = dict(
        arch="paper",
        vocab_size=61,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_ffn=32,
        max_seq_len=16,
        dropout=0.0,
        attn_dropout=0.0,
        n_experts=4,
        moe_every=1,
        top_k=2,
        capacity_factor=None,
    )
    return ModelConfig(**{**base, **changes}).validate()
