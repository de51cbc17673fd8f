"""Which Hugging Face class expresses a moelab model exactly: the registry of supported classes
(each an :class:`~moelab.interop.hf_base.HFClass`, defined by its family module) and the choice
among them for an export or an import.
"""

from __future__ import annotations

from typing import Any

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.interop import hf_glm4_moe, hf_llama, hf_moe, hf_xglm
from moelab.interop.hf_base import HFClass


def registry() -> list[HFClass]:
    return [
        hf_xglm.XGLM,
        hf_llama.LLAMA,
        hf_moe.MIXTRAL,
        hf_moe.QWEN2_MOE,
        hf_glm4_moe.GLM4_MOE,
    ]


def class_for_model(cfg: ModelConfig) -> HFClass:
    """The stock class that computes ``cfg`` exactly in eval mode; otherwise a MoelabError that
    says in one line why none does."""
    if cfg.arch == "paper" and cfg.is_moe:
        raise MoelabError(
            "cannot export to Hugging Face: no stock transformers class has the paper's MoE "
            "(sinusoidal positions, LayerNorm, GELU experts with biases, MoE every "
            f"{cfg.moe_every} layers); evaluate it with moelab or its lm-eval adapter"
        )
    if cfg.is_moe and cfg.eval_capacity_factor is not None:
        raise MoelabError(
            "cannot export to Hugging Face: this run evaluates with "
            f"eval_capacity_factor={cfg.eval_capacity_factor} (tokens over capacity are "
            "dropped) and every Hugging Face MoE class is dropless; an export would compute "
            "something else. Export a run whose model.eval_capacity_factor is null"
        )
    if cfg.arch == "paper":
        candidates = [hf_xglm.XGLM]
    elif not cfg.is_moe:
        candidates = [hf_llama.LLAMA]
    else:
        candidates = [hf_moe.MIXTRAL, hf_moe.QWEN2_MOE, hf_glm4_moe.GLM4_MOE]
    reasons = []
    for cls in candidates:
        why = cls.misfit(cfg)
        if why is None:
            return cls
        reasons.append(f"{cls.name} {why}")
    if cfg.is_moe and cfg.router_score == "sigmoid":
        reasons.append(hf_glm4_moe.DEEPSEEK_V3_MISFIT)
    raise MoelabError("cannot export to Hugging Face: " + "; ".join(reasons))


def class_for_hf_config(hf_config: Any) -> HFClass:
    model_type = getattr(hf_config, "model_type", None)
    for cls in registry():
        if cls.model_type == model_type:
            return cls
    names = ", ".join(c.name for c in registry())
    raise MoelabError(
        f"cannot import a {model_type!r} model: moelab imports only {names} "
        "(the classes it computes exactly)"
    )
