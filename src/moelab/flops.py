"""Parameter counts and training FLOPs per token for any ``ModelConfig``, analytically (no
weights allocated; a test compares the counts with ``sum(p.numel())`` of a built model).
docs/compute.md is the one account of the two FLOP accountings: :func:`train_flops_per_token`,
the paper's (Narayanan et al. 2021, with activation recomputation), for budgets and compute
matching; :func:`palm_flops_per_token`, PaLM's ``6 N + 12 L T D``, for MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model. ``active`` counts what one token uses: every shared
    parameter, the router, and ``top_k`` experts per MoE layer (not all ``n_experts``)."""

    total: int
    active: int
    embedding: int  # the tied token embedding / output projection, counted once
    non_embedding: int  # total - embedding
    active_non_embedding: int  # active - embedding
    experts: int  # all routed expert FFN parameters over all MoE layers (0 for dense)
    router: int  # all router (gate) weights over all MoE layers (0 for dense)
    shared_experts: int = 0  # shared expert FFNs and their gates over all MoE layers


def _ffn_params(cfg: ModelConfig, width: int | None = None) -> int:
    """One FFN of hidden width ``width`` (default d_ffn: a dense FFN; an expert passes its
    own): GELU fc1+fc2 with biases, or SwiGLU w1,w3,w2 without."""
    d, f = cfg.d_model, cfg.d_ffn if width is None else width
    if cfg.arch == "modern":
        return 3 * d * f
    return (d * f + f) + (f * d + d)


def _attention_params(cfg: ModelConfig) -> int:
    d = cfg.d_model
    if cfg.arch == "modern":
        return 4 * d * d  # q, k, v, o without biases
    return 4 * (d * d + d)  # q, k, v, out with biases


def _norm_params(cfg: ModelConfig) -> int:
    """One normalisation layer: LayerNorm has weight and bias, RMSNorm only a weight."""
    return cfg.d_model if cfg.arch == "modern" else 2 * cfg.d_model


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Count parameters from the config alone (positions are sinusoidal or rotary: no params)."""
    d = cfg.d_model
    moe_layers = set(cfg.moe_layer_ids())
    n_moe = len(moe_layers)
    expert = _ffn_params(cfg, cfg.expert_width)
    # every block's attention, norms and dense FFN or router and shared experts
    blocks = sum(block_dense_params(cfg, i in moe_layers) for i in range(cfg.n_layers))
    experts = n_moe * cfg.n_experts * expert
    embedding = cfg.vocab_size * d  # tied: the output projection reuses it
    outside = _norm_params(cfg) + embedding  # the final norm and the embedding
    total = blocks + experts + outside
    active = blocks + n_moe * cfg.top_k * expert + outside
    return ParamCounts(
        total=total,
        active=active,
        embedding=embedding,
        non_embedding=total - embedding,
        active_non_embedding=active - embedding,
        experts=experts,
        router=n_moe * d * cfg.n_experts,  # linear without bias
        shared_experts=n_moe * _moe_shared_params(cfg),
    )


def _moe_shared_params(cfg: ModelConfig) -> int:
    """An MoE layer's always-on part besides the router: its shared experts (one FFN of width
    n_shared * expert width) and their gate (D -> 1, no bias)."""
    if not cfg.n_shared_experts:
        return 0
    gate = cfg.d_model if cfg.shared_expert_gate else 0
    return _ffn_params(cfg, cfg.n_shared_experts * cfg.expert_width) + gate


def block_dense_params(cfg: ModelConfig, moe_layer: bool) -> int:
    """Parameters of one block outside its routed experts (what FSDP gathers for it):
    attention, two norms, and the FFN of a dense layer or the router (and shared experts) of
    an MoE layer."""
    shared = _attention_params(cfg) + 2 * _norm_params(cfg)
    if moe_layer:
        return shared + cfg.d_model * cfg.n_experts + _moe_shared_params(cfg)
    return shared + _ffn_params(cfg)


def _forward_matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weight-matrix entries one token multiplies through in the blocks (biases, norms, the
    router and the shared experts' gate excluded, as the paper leaves out the router):
    attention projections plus the active FFN matrices, which in an MoE layer are top_k
    experts of width d_expert and the shared experts (n_shared x d_expert)."""
    d, f = cfg.d_model, cfg.d_ffn
    n_mats = 3 if cfg.arch == "modern" else 2  # SwiGLU has three FFN matrices, GELU two
    ffn_mm = n_mats * d * f
    moe_mm = n_mats * d * cfg.expert_width * (cfg.top_k + cfg.n_shared_experts)
    n_moe = len(cfg.moe_layer_ids())
    n_dense = cfg.n_layers - n_moe
    attn_mm = 4 * d * d
    return cfg.n_layers * attn_mm + n_dense * ffn_mm + n_moe * moe_mm


def train_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token in the paper's (Narayanan et al. 2021) accounting.

    Blocks cost 4 passes (forward, backward = 2x forward, and the forward again for activation
    recomputation) of the forward FLOPs ``2 * (attention projection + active FFN matmul params)``
    plus the attention scores ``4 * s * d_model`` per layer (QK^T and attention-times-V over the
    full, non-causal ``s x s`` square). The logits cost 3 passes (not recomputed) of
    ``2 * d_model * vocab``. The router is ignored, as in the paper. For the paper's GELU models
    with ``d_ffn = 4 d`` this is exactly ``96 l h^2 (1 + s/(6h) + V/(16 l h))``, and each top-2 MoE
    layer adds ``64 h^2``. ``seq_len`` defaults to ``cfg.max_seq_len``.
    """
    s = cfg.max_seq_len if seq_len is None else seq_len
    forward_blocks = 2 * _forward_matmul_params_per_token(cfg) + cfg.n_layers * 4 * s * cfg.d_model
    logits = 2 * cfg.d_model * cfg.vocab_size
    return float(4 * forward_blocks + 3 * logits)


def palm_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """PaLM's (appendix B) estimate ``6 * N_active + 12 * n_layers * seq_len * d_model``, with no
    activation recomputation: the FLOPs the model needs, the number to use for MFU.

    ``N_active`` is :func:`count_params` ``.active``: every parameter one token passes through,
    including the tied embedding once (its use as the output projection is a real ``2 d V``
    matmul per token), the router (computed for every token) and ``top_k`` experts per MoE layer,
    but not the experts the token skips. Biases and norms are included; they are a rounding
    error. ``seq_len`` defaults to ``cfg.max_seq_len``.
    """
    s = cfg.max_seq_len if seq_len is None else seq_len
    return float(6 * count_params(cfg).active + 12 * cfg.n_layers * s * cfg.d_model)


def train_flops(cfg: ModelConfig, tokens: float, seq_len: int | None = None) -> float:
    """Training FLOPs for ``tokens`` tokens in the paper's accounting."""
    return train_flops_per_token(cfg, seq_len) * float(tokens)


def tokens_for_budget(cfg: ModelConfig, flops: float, seq_len: int | None = None) -> float:
    """Tokens a compute budget (paper accounting) buys for this model."""
    return float(flops) / train_flops_per_token(cfg, seq_len)
