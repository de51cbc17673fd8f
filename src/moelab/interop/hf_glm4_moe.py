"""Sigmoid-routed MoE models (DeepSeek-V3's router: selection bias, ``norm_topk``,
``route_scale``, ungated shared experts) <-> ``Glm4MoeForCausalLM``, which has that router and
Llama's attention (``DeepseekV3ForCausalLM`` has multi-head latent attention, which moelab's is
not). docs/interop.md (*Which class*) is the one account of the mapping; the
selection bias travels as the class's ``e_score_correction_bias``.
"""

from __future__ import annotations

from typing import Any

import torch

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop.hf_base import HFClass, SpecialIds, State, rename
from moelab.interop.hf_llama import modern_common, read_modern
from moelab.interop.hf_moe import (
    empty_mlp,
    expert_widths,
    experts_from_hf,
    experts_to_hf,
    moe_misfit,
    moe_model_config,
    moe_pairs,
    read_norm_topk,
)

# Why DeepseekV3ForCausalLM is not used (said in the refusal of a sigmoid model no class fits).
DEEPSEEK_V3_MISFIT = (
    "DeepseekV3ForCausalLM has this router but multi-head latent attention (keys and values "
    "from one RMS-normalised low-rank latent, one rotary key shared by all heads), which "
    "moelab's attention is not"
)
BIAS = "e_score_correction_bias"


def _misfit(cfg: ModelConfig) -> str | None:
    if why := moe_misfit(cfg):
        return why
    if cfg.router_score != "sigmoid":
        return f"scores experts with sigmoid; this model with {cfg.router_score}"
    if cfg.moe_every != 1:
        return (
            "has an MoE in every layer from first_k_dense_replace on; this model has one every "
            f"{cfg.moe_every} layers"
        )
    if cfg.shared_expert_gate:
        return "adds its shared experts ungated; this model gates them"
    return None


def _make_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import Glm4MoeConfig

    common = modern_common(cfg, ids)
    common["rope_parameters"] = {**common["rope_parameters"], "partial_rotary_factor": 1.0}
    return Glm4MoeConfig(
        **common,
        moe_intermediate_size=cfg.expert_width,
        n_routed_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        n_shared_experts=cfg.n_shared_experts,
        routed_scaling_factor=cfg.route_scale,
        norm_topk_prob=cfg.normalizes_topk,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=0,
        use_qk_norm=False,
        attention_bias=False,
        output_router_logits=False,
    )


def _read_config(c: Any) -> ModelConfig:
    def refuse(why: str) -> MoelabError:
        return MoelabError(f"cannot import this GLM-4.5 MoE model: {why}")

    fields = read_modern(c, "GLM-4.5 MoE")
    if getattr(c, "use_qk_norm", False):
        raise refuse("use_qk_norm is set; moelab's attention normalises no queries or keys")
    rope = getattr(c, "rope_parameters", None) or {}
    partial = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 0.5))
    if partial != 1.0:
        raise refuse(f"partial_rotary_factor {partial}; moelab rotates every head dimension")
    if c.first_k_dense_replace:
        raise refuse(
            f"first_k_dense_replace={c.first_k_dense_replace} (dense first layers); moelab places "
            "MoE layers every moe_every layers from layer moe_every on"
        )
    if (c.n_group, c.topk_group) != (1, 1):
        raise refuse(f"group-limited routing (n_group={c.n_group}, topk_group={c.topk_group})")
    k = c.num_experts_per_tok
    return moe_model_config(
        fields,
        **expert_widths(c.intermediate_size, c.moe_intermediate_size, False),
        n_experts=c.n_routed_experts,
        moe_every=1,
        top_k=k,
        n_shared_experts=c.n_shared_experts,
        router_score="sigmoid",
        norm_topk=read_norm_topk(c.norm_topk_prob, k),
        route_scale=float(c.routed_scaling_factor),
        # The class always has the selection bias: it comes back as moelab's bias balancing.
        balance="bias",
        aux_loss_weight=0.0,
    )


def _to_hf(state: State, cfg: ModelConfig) -> State:
    out = rename(state, moe_pairs(cfg, "shared_experts"))
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    for i in cfg.moe_layer_ids():
        prefix = f"model.layers.{i}.mlp."
        out.update(experts_to_hf(state, i, prefix))
        bias = state.get(f"layers.{i}.ffn.score_bias")
        if bias is None:  # balanced by a loss or not at all: no bias, i.e. zeros
            bias = torch.zeros(cfg.n_experts)
        out[prefix + "gate." + BIAS] = bias.float()
        if not cfg.n_shared_experts:
            out.update(empty_mlp(state, i, "shared_experts", cfg.d_model))
    return out


def _from_hf(state: State, cfg: ModelConfig) -> State:
    out = rename(state, moe_pairs(cfg, "shared_experts"), reverse=True)
    for i in cfg.moe_layer_ids():
        prefix = f"model.layers.{i}.mlp."
        out.update(experts_from_hf(state, i, prefix, cfg.expert_width))
        out[f"layers.{i}.ffn.score_bias"] = state[prefix + "gate." + BIAS].float()
    return out


GLM4_MOE = HFClass(
    name="Glm4MoeForCausalLM",
    model_type="glm4_moe",
    misfit=_misfit,
    make_config=_make_config,
    read_config=_read_config,
    to_hf=_to_hf,
    from_hf=_from_hf,
)
