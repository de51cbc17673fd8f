"""Modern-architecture MoE models <-> ``MixtralForCausalLM`` or ``Qwen2MoeForCausalLM``: both
route like moelab in eval mode (dropless softmax in float32, top-k, SwiGLU experts) and have no
route scale or selection bias (sigmoid routing goes to :mod:`moelab.interop.hf_glm4_moe`).
docs/interop.md (*Which class*) is the one account of which configs each expresses
exactly (Mixtral: an MoE in every layer, top-k weights renormalised, no shared experts;
Qwen2-MoE: ``norm_topk_prob``, ``decoder_sparse_step``, a sigmoid-gated shared expert, exported
with width 0 when there is none) and of what an export leaves out.
"""

from __future__ import annotations

from typing import Any

import torch

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop.hf_base import HFClass, SpecialIds, State, rename
from moelab.interop.hf_llama import block_pairs, mlp_pairs, modern_common, read_modern


def moe_misfit(cfg: ModelConfig) -> str | None:
    if cfg.arch != "modern" or not cfg.is_moe:
        return "expresses only modern-arch MoE models"
    if cfg.eval_capacity_factor is not None:
        return "is dropless; this model drops tokens over capacity in eval mode"
    return None


def _softmax_misfit(cfg: ModelConfig) -> str | None:
    """What a softmax-gated class without route scale or selection bias cannot express."""
    if why := moe_misfit(cfg):
        return why
    if cfg.router_score != "softmax":
        return f"scores experts with softmax; this model with {cfg.router_score}"
    if cfg.route_scale != 1.0:
        return f"has no route scale; this model scales routed outputs by {cfg.route_scale}"
    if cfg.balance == "bias":
        return "has no selection bias; this model balances with a per-expert bias"
    return None


# ---------------------------------------------------------------------------------------------
# Expert weights: moelab stacks (E, D, F) "in, out" matrices; HF stacks nn.Linear-style (out, in)
# matrices with gate and up fused along the output dim: gate_up_proj (E, 2F, D), down (E, D, F).


def experts_to_hf(state: State, layer: int, prefix: str) -> State:
    p = f"layers.{layer}.ffn."
    w1_EDF, w3_EDF, w2_EFD = (state[f"{p}experts.{w}"] for w in ("w1", "w3", "w2"))
    return {
        prefix + "gate.weight": state[p + "gate.weight"],
        prefix + "experts.gate_up_proj": torch.cat([w1_EDF, w3_EDF], dim=2)
        .transpose(1, 2)
        .contiguous(),
        prefix + "experts.down_proj": w2_EFD.transpose(1, 2).contiguous(),
    }


def experts_from_hf(state: State, layer: int, prefix: str, width: int) -> State:
    p = f"layers.{layer}.ffn."
    names = ("experts.gate_up_proj", "experts.down_proj", "gate.weight")
    hf = rename(state, [(name, prefix + name) for name in names], reverse=True)
    gate_up_E2FD, down_EDF = hf["experts.gate_up_proj"], hf["experts.down_proj"]
    return {
        p + "gate.weight": hf["gate.weight"],
        p + "experts.w1": gate_up_E2FD[:, :width].transpose(1, 2).contiguous(),
        p + "experts.w3": gate_up_E2FD[:, width:].transpose(1, 2).contiguous(),
        p + "experts.w2": down_EDF.transpose(1, 2).contiguous(),
    }


def empty_mlp(state: State, layer: int, theirs: str, d_model: int) -> State:
    """A zero-width MLP for a class that always has one: its output is an empty sum, i.e. 0."""
    ref, hf = state["embed.weight"], f"model.layers.{layer}.mlp.{theirs}."
    return {
        hf + "gate_proj.weight": ref.new_zeros(0, d_model),
        hf + "up_proj.weight": ref.new_zeros(0, d_model),
        hf + "down_proj.weight": ref.new_zeros(d_model, 0),
    }


def moe_pairs(cfg: ModelConfig, shared: str) -> list[tuple[str, str]]:
    """Name pairs of all but the experts and router: blocks, the dense layers' FFNs and the
    shared experts (one FeedForward of width n_shared x d_expert) as an HF MLP named
    ``shared`` (Qwen2-MoE: ``shared_expert``, DeepSeek-V3/GLM-4.5: ``shared_experts``)."""
    pairs, moe = block_pairs(cfg), cfg.moe_layer_ids()
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.ffn.", f"model.layers.{i}.mlp."
        if i not in moe:
            pairs += mlp_pairs(ours, theirs)
        elif cfg.n_shared_experts:
            pairs += mlp_pairs(f"{ours}shared.", f"{theirs}{shared}.")
    return pairs


def _to_hf(state: State, cfg: ModelConfig, shared_expert: bool) -> State:
    out = rename(state, moe_pairs(cfg, "shared_expert"))
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    for i in cfg.moe_layer_ids():
        prefix = f"model.layers.{i}.mlp."
        out.update(experts_to_hf(state, i, prefix))
        if not shared_expert:
            continue
        gate = prefix + "shared_expert_gate.weight"
        if cfg.n_shared_experts:
            out[gate] = state[f"layers.{i}.ffn.shared_gate.weight"]
        else:
            out.update(empty_mlp(state, i, "shared_expert", cfg.d_model))
            out[gate] = state["embed.weight"].new_zeros(1, cfg.d_model)
    return out


def _from_hf(state: State, cfg: ModelConfig) -> State:
    pairs = moe_pairs(cfg, "shared_expert")
    for i in cfg.moe_layer_ids() if cfg.n_shared_experts else []:
        gate = "shared_gate.weight", "shared_expert_gate.weight"
        pairs.append((f"layers.{i}.ffn.{gate[0]}", f"model.layers.{i}.mlp.{gate[1]}"))
    out = rename(state, pairs, reverse=True)
    for i in cfg.moe_layer_ids():
        out.update(experts_from_hf(state, i, f"model.layers.{i}.mlp.", cfg.expert_width))
    return out


def _moe_fields(cfg: ModelConfig) -> dict[str, Any]:
    return dict(router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)


def moe_model_config(fields: dict[str, Any], **moe: Any) -> ModelConfig:
    """A dropless moelab MoE config (HF classes never drop tokens, in training either)."""
    return ModelConfig(
        **fields,
        **moe,
        capacity_factor=None,
        eval_capacity_factor=None,
        second_expert_policy="all",
        z_loss_weight=0.0,
    ).validate()


# ---------------------------------------------------------------------------------------------
# Mixtral


def _mixtral_misfit(cfg: ModelConfig) -> str | None:
    if why := _softmax_misfit(cfg):
        return why
    if cfg.moe_every != 1:
        return f"has an MoE in every layer; this model has one every {cfg.moe_every} layers"
    if not cfg.normalizes_topk:
        if cfg.top_k == 1:
            return (
                "renormalises the chosen gate to 1 for top_k=1, where moelab keeps the probability"
            )
        return "always renormalises the top-k weights; this model has norm_topk false"
    if cfg.n_shared_experts:
        return "has no shared experts"
    return None


def _mixtral_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        **{**modern_common(cfg, ids), "intermediate_size": cfg.expert_width},
        num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        router_jitter_noise=0.0,
        sliding_window=None,
        **_moe_fields(cfg),
    )


def _mixtral_read(c: Any) -> ModelConfig:
    fields = read_modern(c, "Mixtral")
    k = c.num_experts_per_tok
    if getattr(c, "router_jitter_noise", 0.0):
        raise MoelabError(
            "cannot import this Mixtral model: router_jitter_noise > 0 (moelab has no jitter)"
        )
    window = getattr(c, "sliding_window", None)
    if window is not None and window < c.max_position_embeddings:
        raise MoelabError(
            f"cannot import this Mixtral model: sliding-window attention ({window} tokens); "
            "moelab attends to the whole context"
        )
    return moe_model_config(
        fields,
        d_ffn=c.intermediate_size,
        n_experts=c.num_local_experts,
        moe_every=1,
        top_k=k,
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
        norm_topk=read_norm_topk(True, k),  # Mixtral renormalises, a top-1 weight to 1 too
    )


MIXTRAL = HFClass(
    name="MixtralForCausalLM",
    model_type="mixtral",
    misfit=_mixtral_misfit,
    make_config=_mixtral_config,
    read_config=_mixtral_read,
    to_hf=lambda state, cfg: _to_hf(state, cfg, shared_expert=False),
    from_hf=_from_hf,
)


# ---------------------------------------------------------------------------------------------
# Qwen2-MoE


def _qwen_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **modern_common(cfg, ids),
        moe_intermediate_size=cfg.expert_width,
        shared_expert_intermediate_size=cfg.n_shared_experts * cfg.expert_width,
        num_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        norm_topk_prob=cfg.normalizes_topk,
        decoder_sparse_step=cfg.moe_every,
        mlp_only_layers=[],
        qkv_bias=False,
        use_sliding_window=False,
        **_moe_fields(cfg),
    )


def _qwen_misfit(cfg: ModelConfig) -> str | None:
    if why := _softmax_misfit(cfg):
        return why
    if cfg.n_shared_experts and not cfg.shared_expert_gate:
        return (
            "gates its shared expert with sigmoid(Linear(x)); this model adds its shared experts "
            "ungated (set model.shared_expert_gate: true to train one it can express)"
        )
    return None


def _qwen_read(c: Any) -> ModelConfig:
    def refuse(why: str) -> MoelabError:
        return MoelabError(f"cannot import this Qwen2-MoE model: {why}")

    fields = read_modern(c, "Qwen2-MoE")
    if getattr(c, "mlp_only_layers", None):
        raise refuse("mlp_only_layers is set; moelab places MoE layers every moe_every layers")
    if getattr(c, "use_sliding_window", False):
        raise refuse("sliding-window attention; moelab attends to the whole context")
    k, width = c.num_experts_per_tok, c.moe_intermediate_size
    shared, rest = divmod(c.shared_expert_intermediate_size or 0, width)
    if rest:
        raise refuse(
            f"its shared expert's width {c.shared_expert_intermediate_size} is not a multiple of "
            f"the expert width {width}; moelab's shared experts have the routed experts' width"
        )
    return moe_model_config(
        fields,
        **expert_widths(c.intermediate_size, width, c.decoder_sparse_step > 1),
        n_experts=c.num_experts,
        moe_every=c.decoder_sparse_step,
        top_k=k,
        norm_topk=read_norm_topk(c.norm_topk_prob, k),
        n_shared_experts=shared,
        shared_expert_gate=shared > 0,
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
    )


def expert_widths(dense: int, expert: int, has_dense_layers: bool) -> dict[str, Any]:
    """moelab's d_ffn / d_expert for an HF dense width and expert width: without dense layers
    the expert width is d_ffn; d_expert is set only where the two differ."""
    if not has_dense_layers or dense == expert:
        return {"d_ffn": expert}
    return {"d_ffn": dense, "d_expert": expert}


def read_norm_topk(norm_topk_prob: Any, k: int) -> bool | None:
    """moelab's norm_topk for an HF norm_topk_prob: None (the default rule) where they agree."""
    norm = bool(norm_topk_prob)
    return None if norm == (k >= 2) else norm


QWEN2_MOE = HFClass(
    name="Qwen2MoeForCausalLM",
    model_type="qwen2_moe",
    misfit=_qwen_misfit,
    make_config=_qwen_config,
    read_config=_qwen_read,
    to_hf=lambda state, cfg: _to_hf(state, cfg, shared_expert=True),
    from_hf=_from_hf,
)
