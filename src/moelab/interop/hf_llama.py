"""Dense modern-architecture models <-> ``LlamaForCausalLM`` (tied embeddings).

Llama is RMSNorm (float32 inside, weight applied after casting back), rotary positions in the
``rotate_half`` layout, SwiGLU ``down(silu(gate x) * up x)`` and no biases: moelab's modern arch
with ``w1 = gate_proj``, ``w3 = up_proj``, ``w2 = down_proj``. moelab always ties the output
projection to the embedding and has one key/value head per query head, so only Llama configs
with ``tie_word_embeddings`` and no grouped-query attention import.

The shared helpers here (rotary settings, attention and norm keys) serve the MoE classes too.
"""

from __future__ import annotations

from typing import Any

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop.hf_base import HFClass, SpecialIds, by_name


def modern_common(cfg: ModelConfig, ids: SpecialIds) -> dict[str, Any]:
    """HF config fields every modern-arch class shares."""
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ffn,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_dropout=cfg.attn_dropout,
        tie_word_embeddings=True,
        bos_token_id=ids.eot,
        eos_token_id=ids.eot,
        pad_token_id=ids.pad,
    )


def read_modern(c: Any, what: str) -> dict[str, Any]:
    """ModelConfig fields of a Llama-family config, refusing what moelab cannot compute."""

    def refuse(why: str) -> MoelabError:
        return MoelabError(f"cannot import this {what} model: {why}")

    if getattr(c, "hidden_act", "silu") != "silu":
        raise refuse(f"activation {c.hidden_act!r}; moelab's modern arch uses SwiGLU (silu)")
    if not getattr(c, "tie_word_embeddings", False):
        raise refuse("untied output embeddings (lm_head); moelab ties them to the embedding")
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    if kv != c.num_attention_heads:
        raise refuse(
            f"grouped-query attention ({kv} key/value heads for {c.num_attention_heads} query "
            "heads); moelab has one per query head"
        )
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise refuse(f"head_dim {head_dim} x {c.num_attention_heads} heads != hidden_size")
    for flag in ("attention_bias", "mlp_bias", "qkv_bias"):
        if getattr(c, flag, False):
            raise refuse(f"{flag} is set; moelab's modern arch has no biases")
    if getattr(c, "pretraining_tp", 1) not in (None, 1):
        raise refuse("pretraining_tp != 1")
    rope = getattr(c, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "full_attention" in rope:  # per-layer-type form
        rope = rope["full_attention"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise refuse(f"rope scaling {rope_type!r}; moelab implements plain rotary positions")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    if theta is None:
        raise refuse("no rope_theta in its config")
    return dict(
        name=f"hf-{c.model_type}",
        arch="modern",
        vocab_size=c.vocab_size,
        n_layers=c.num_hidden_layers,
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        max_seq_len=c.max_position_embeddings,
        # Llama-family classes have no residual or activation dropout, only attention dropout.
        dropout=0.0,
        attn_dropout=float(getattr(c, "attention_dropout", 0.0) or 0.0),
        activation_dropout=0.0,
        norm_eps=float(c.rms_norm_eps),
        init_std=float(getattr(c, "initializer_range", 0.02)),
        rope_theta=float(theta),
    )


def block_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Embedding, final norm, and per layer the attention and norm weights."""
    pairs = [
        ("embed.weight", "model.embed_tokens.weight"),
        ("final_norm.weight", "model.norm.weight"),
    ]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in [
            ("attn_norm", "input_layernorm"),
            ("attn.q_proj", "self_attn.q_proj"),
            ("attn.k_proj", "self_attn.k_proj"),
            ("attn.v_proj", "self_attn.v_proj"),
            ("attn.out_proj", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
        ]:
            pairs.append((f"{ours}{a}.weight", f"{theirs}{b}.weight"))
    return pairs


def mlp_pairs(ours: str, theirs: str) -> list[tuple[str, str]]:
    """moelab's SwiGLU FFN under ``ours`` <-> an HF MLP (gate, up, down) under ``theirs``."""
    names = [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")]
    return [(f"{ours}{a}.weight", f"{theirs}{b}.weight") for a, b in names]


def _misfit(cfg: ModelConfig) -> str | None:
    if cfg.arch != "modern" or cfg.is_moe:
        return "expresses only dense modern-arch models"
    return None


def _make_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**modern_common(cfg, ids), attention_bias=False, mlp_bias=False)


def _read_config(c: Any) -> ModelConfig:
    fields = read_modern(c, "Llama")
    return ModelConfig(**fields, d_ffn=c.intermediate_size, n_experts=0).validate()


def _pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    pairs = block_pairs(cfg)
    for i in range(cfg.n_layers):
        pairs += mlp_pairs(f"layers.{i}.ffn.", f"model.layers.{i}.mlp.")
    return pairs


LLAMA = HFClass(
    name="LlamaForCausalLM",
    model_type="llama",
    misfit=_misfit,
    make_config=_make_config,
    read_config=_read_config,
    **by_name(_pairs),
)
