"""Dense paper-architecture models <-> ``XGLMForCausalLM``.

XGLM is fairseq's dense decoder: sqrt(D)-scaled embeddings plus sinusoidal positions starting at
table row 2, pre-LayerNorm blocks (eps fixed at 1e-5), exact GELU, biases everywhere and a tied
output projection. moelab's paper arch is the same computation when its ``padding_idx`` is 1
(positions start at row padding_idx + 1) and its norm eps is 1e-5.
"""

from __future__ import annotations

from typing import Any

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop.hf_base import HFClass, SpecialIds, by_name

XGLM_EPS = 1e-5  # XGLM's nn.LayerNorm uses the default eps, not a config value


def _misfit(cfg: ModelConfig) -> str | None:
    if cfg.arch != "paper" or cfg.is_moe:
        return "expresses only dense paper-arch models"
    if cfg.padding_idx != 1:
        return (
            f"numbers positions from table row 2 (fairseq padding index 1); this model uses "
            f"padding_idx={cfg.padding_idx}"
        )
    if cfg.norm_eps != XGLM_EPS:
        return f"fixes LayerNorm eps at 1e-5; this model uses norm_eps={cfg.norm_eps}"
    return None


def _make_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import XGLMConfig

    return XGLMConfig(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_seq_len,
        d_model=cfg.d_model,
        ffn_dim=cfg.d_ffn,
        num_layers=cfg.n_layers,
        attention_heads=cfg.n_heads,
        activation_function="gelu",
        dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        activation_dropout=cfg.activation_dropout,
        layerdrop=0.0,
        init_std=cfg.init_std,
        scale_embedding=True,
        # XGLM uses pad_token_id for two things: the zeroed row of the position table (it must
        # not be a row real positions use, i.e. <= 1) and the embedding's padding_idx.
        pad_token_id=1,
        bos_token_id=ids.eot,
        eos_token_id=ids.eot,
        decoder_start_token_id=ids.eot,
        tie_word_embeddings=True,
    )


def _read_config(c: Any) -> ModelConfig:
    def refuse(why: str) -> MoelabError:
        return MoelabError(f"cannot import this XGLM model: {why}")

    if not c.scale_embedding:
        raise refuse("scale_embedding is false; moelab's paper arch scales by sqrt(d_model)")
    if c.activation_function != "gelu":
        raise refuse(f"activation {c.activation_function!r}; moelab uses exact GELU")
    if c.pad_token_id not in (None, 0, 1):
        raise refuse(
            f"pad_token_id={c.pad_token_id} zeroes a position-table row that real positions "
            "use; moelab's table zeroes row 1"
        )
    if not getattr(c, "tie_word_embeddings", True):
        raise refuse("untied output embeddings; moelab ties them")
    if getattr(c, "add_cross_attention", False):
        raise refuse("it has cross-attention (an encoder-decoder); moelab is decoder-only")
    return ModelConfig(
        name=f"hf-{c.model_type}",
        arch="paper",
        vocab_size=c.vocab_size,
        n_layers=c.num_layers,
        d_model=c.d_model,
        n_heads=c.attention_heads,
        d_ffn=c.ffn_dim,
        max_seq_len=c.max_position_embeddings,
        dropout=float(c.dropout),
        attn_dropout=float(c.attention_dropout),
        activation_dropout=float(c.activation_dropout),
        padding_idx=1,
        norm_eps=XGLM_EPS,
        init_std=float(c.init_std),
        n_experts=0,
    ).validate()


def _pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    pairs = [
        ("embed.weight", "model.embed_tokens.weight"),
        ("final_norm.weight", "model.layer_norm.weight"),
        ("final_norm.bias", "model.layer_norm.bias"),
    ]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for a, b in [
            ("attn_norm", "self_attn_layer_norm"),
            ("attn.q_proj", "self_attn.q_proj"),
            ("attn.k_proj", "self_attn.k_proj"),
            ("attn.v_proj", "self_attn.v_proj"),
            ("attn.out_proj", "self_attn.out_proj"),
            ("ffn_norm", "final_layer_norm"),
            ("ffn.fc1", "fc1"),
            ("ffn.fc2", "fc2"),
        ]:
            for leaf in ("weight", "bias"):
                pairs.append((f"{ours}{a}.{leaf}", f"{theirs}{b}.{leaf}"))
    return pairs


XGLM = HFClass(
    name="XGLMForCausalLM",
    model_type="xglm",
    misfit=_misfit,
    make_config=_make_config,
    read_config=_read_config,
    **by_name(_pairs),
)
