"""Modern-architecture MoE models <-> ``MixtralForCausalLM`` or ``Qwen2MoeForCausalLM``.

Both classes route like moelab in eval mode: softmax of the router logits in float32, the top-k
experts, SwiGLU experts, outputs summed with the gate weights, no token dropped. They differ
in what moelab configs they can express:

- **Mixtral** always renormalises the k chosen gates to sum to 1. moelab does the same for
  k >= 2, but for k = 1 it keeps the raw router probability (Switch), where Mixtral would use 1.
  Mixtral also has an MoE in every layer. So: ``moe_every == 1`` and ``top_k >= 2``.
- **Qwen2-MoE** has a ``norm_topk_prob`` switch (off for k = 1, on for k >= 2), puts its MoE in
  every ``decoder_sparse_step``-th layer (1-based, moelab's ``moe_every`` rule) and adds a
  sigmoid-gated shared expert; with ``shared_expert_intermediate_size = 0`` that expert's output
  is exactly zero. It covers every modern MoE Mixtral cannot.

Neither class drops tokens, so moelab refuses to export a run evaluated with a finite capacity
factor. Training-time moelab features (capacity dropping, second-expert sampling, z-loss, the
exact balancing-loss form) do not exist in these classes: the exported model is exact for
inference and evaluation; fine-tuning it in transformers trains a dropless MoE.
"""

from __future__ import annotations

from typing import Any

import torch

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop.hf_base import HFClass, SpecialIds, State, rename
from moelab.interop.hf_llama import block_pairs, dense_ffn_pairs, modern_common, read_modern


def _moe_misfit(cfg: ModelConfig) -> str | None:
    if cfg.arch != "modern" or not cfg.is_moe:
        return "expresses only modern-arch MoE models"
    if cfg.eval_capacity_factor is not None:
        return "is dropless; this model drops tokens over capacity in eval mode"
    return None


# ---------------------------------------------------------------------------------------------
# Expert weights: moelab stacks (E, D, F) "in, out" matrices; HF stacks nn.Linear-style (out, in)
# matrices with gate and up fused along the output dim: gate_up_proj (E, 2F, D), down (E, D, F).


def experts_to_hf(state: State, layer: int, prefix: str) -> State:
    p = f"layers.{layer}.ffn."
    w1_EDF, w3_EDF, w2_EFD = (
        state[p + "experts.w1"],
        state[p + "experts.w3"],
        state[p + "experts.w2"],
    )
    return {
        prefix + "gate.weight": state[p + "gate.weight"],
        prefix + "experts.gate_up_proj": torch.cat([w1_EDF, w3_EDF], dim=2)
        .transpose(1, 2)
        .contiguous(),
        prefix + "experts.down_proj": w2_EFD.transpose(1, 2).contiguous(),
    }


def experts_from_hf(state: State, layer: int, prefix: str, d_ffn: int) -> State:
    p = f"layers.{layer}.ffn."
    try:
        gate_up_E2FD = state[prefix + "experts.gate_up_proj"]
        down_EDF = state[prefix + "experts.down_proj"]
        gate = state[prefix + "gate.weight"]
    except KeyError as e:
        raise MoelabError(
            f"weights lack {e.args[0]!r}; the checkpoint does not fit its config"
        ) from None
    return {
        p + "gate.weight": gate,
        p + "experts.w1": gate_up_E2FD[:, :d_ffn].transpose(1, 2).contiguous(),
        p + "experts.w3": gate_up_E2FD[:, d_ffn:].transpose(1, 2).contiguous(),
        p + "experts.w2": down_EDF.transpose(1, 2).contiguous(),
    }


def _dense_layers(cfg: ModelConfig) -> list[int]:
    moe = set(cfg.moe_layer_ids())
    return [i for i in range(cfg.n_layers) if i not in moe]


def _to_hf(state: State, cfg: ModelConfig, shared_expert: bool) -> State:
    pairs = block_pairs(cfg)
    for i in _dense_layers(cfg):
        pairs += dense_ffn_pairs(i)
    out = rename(state, pairs)
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    D = cfg.d_model
    for i in cfg.moe_layer_ids():
        prefix = f"model.layers.{i}.mlp."
        out.update(experts_to_hf(state, i, prefix))
        if shared_expert:  # zero-width shared expert: its output is an empty sum, i.e. 0
            ref = state["embed.weight"]
            out[prefix + "shared_expert.gate_proj.weight"] = ref.new_zeros(0, D)
            out[prefix + "shared_expert.up_proj.weight"] = ref.new_zeros(0, D)
            out[prefix + "shared_expert.down_proj.weight"] = ref.new_zeros(D, 0)
            out[prefix + "shared_expert_gate.weight"] = ref.new_zeros(1, D)
    return out


def _from_hf(state: State, cfg: ModelConfig) -> State:
    pairs = block_pairs(cfg)
    for i in _dense_layers(cfg):
        pairs += dense_ffn_pairs(i)
    out = rename(state, pairs, reverse=True)
    for i in cfg.moe_layer_ids():
        out.update(experts_from_hf(state, i, f"model.layers.{i}.mlp.", cfg.d_ffn))
    return out


def _moe_fields(cfg: ModelConfig) -> dict[str, Any]:
    return dict(router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)


def _moe_model_config(fields: dict[str, Any], **moe: Any) -> ModelConfig:
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
    why = _moe_misfit(cfg)
    if why:
        return why
    if cfg.moe_every != 1:
        return f"has an MoE in every layer; this model has one every {cfg.moe_every} layers"
    if cfg.top_k < 2:
        return "renormalises the chosen gate to 1 for top_k=1, where moelab keeps the probability"
    return None


def _mixtral_config(cfg: ModelConfig, ids: SpecialIds) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        **modern_common(cfg, ids),
        num_local_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        router_jitter_noise=0.0,
        sliding_window=None,
        **_moe_fields(cfg),
    )


def _mixtral_read(c: Any) -> ModelConfig:
    fields = read_modern(c, "Mixtral")
    k = c.num_experts_per_tok
    if k < 2:
        raise MoelabError(
            "cannot import this Mixtral model: top-1 Mixtral gives the chosen expert weight 1; "
            "moelab's top-1 uses the router probability"
        )
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
    return _moe_model_config(
        fields,
        d_ffn=c.intermediate_size,
        n_experts=c.num_local_experts,
        moe_every=1,
        top_k=k,
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
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
        moe_intermediate_size=cfg.d_ffn,
        shared_expert_intermediate_size=0,
        num_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k,
        norm_topk_prob=cfg.top_k >= 2,
        decoder_sparse_step=cfg.moe_every,
        mlp_only_layers=[],
        qkv_bias=False,
        use_sliding_window=False,
        **_moe_fields(cfg),
    )


def _qwen_read(c: Any) -> ModelConfig:
    def refuse(why: str) -> MoelabError:
        return MoelabError(f"cannot import this Qwen2-MoE model: {why}")

    fields = read_modern(c, "Qwen2-MoE")
    if c.shared_expert_intermediate_size:
        raise refuse("it has a shared expert; moelab's MoE layers have none")
    if getattr(c, "mlp_only_layers", None):
        raise refuse("mlp_only_layers is set; moelab places MoE layers every moe_every layers")
    if getattr(c, "use_sliding_window", False):
        raise refuse("sliding-window attention; moelab attends to the whole context")
    k = c.num_experts_per_tok
    if bool(c.norm_topk_prob) != (k >= 2):
        raise refuse(
            f"norm_topk_prob={c.norm_topk_prob} with top-{k}; moelab renormalises the gates "
            "exactly when k >= 2"
        )
    step = c.decoder_sparse_step
    if step > 1 and c.moe_intermediate_size != c.intermediate_size:
        raise refuse("dense and expert FFN widths differ; moelab uses one d_ffn for both")
    return _moe_model_config(
        fields,
        d_ffn=c.moe_intermediate_size,
        n_experts=c.num_experts,
        moe_every=step,
        top_k=k,
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
    )


QWEN2_MOE = HFClass(
    name="Qwen2MoeForCausalLM",
    model_type="qwen2_moe",
    misfit=_moe_misfit,
    make_config=_qwen_config,
    read_config=_qwen_read,
    to_hf=lambda state, cfg: _to_hf(state, cfg, shared_expert=True),
    from_hf=_from_hf,
)
