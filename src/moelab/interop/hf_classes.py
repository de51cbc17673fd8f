"""Which Hugging Face class expresses a moelab model exactly, and the contract each class meets.

Every supported class is one :class:`HFClass`: a test that says why a moelab config does *not*
fit (``None`` when it fits), the HF config that reproduces the model, the reverse (an HF config
-> a moelab :class:`ModelConfig`, refusing anything moelab cannot compute exactly) and the key
mapping between moelab's state dict and the HF module's *in-memory* state dict. The on-disk
layout of each class (e.g. Mixtral's per-expert tensors) is left to ``transformers``'
``save_pretrained`` / ``from_pretrained``, so a folder written here loads wherever that class
loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from moelab.config import ModelConfig
from moelab.errors import MoelabError

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids written into the HF config (bos = eos = the end-of-text token, as in GPT-2)."""

    eot: int
    pad: int


@dataclass(frozen=True)
class HFClass:
    name: str  # transformers class, e.g. "XGLMForCausalLM"
    model_type: str  # config.model_type, e.g. "xglm"
    misfit: Callable[[ModelConfig], str | None]  # why this class cannot express cfg, or None
    make_config: Callable[[ModelConfig, SpecialIds], Any]  # -> transformers PretrainedConfig
    read_config: Callable[[Any], ModelConfig]  # HF config -> moelab config, or MoelabError
    to_hf: Callable[[State, ModelConfig], State]  # moelab state -> HF in-memory state
    from_hf: Callable[[State, ModelConfig], State]  # HF in-memory state -> moelab state


def rename(state: State, pairs: list[tuple[str, str]], *, reverse: bool = False) -> State:
    """Copy ``state`` under new names: ``pairs`` are (moelab name, HF name)."""
    out: State = {}
    for ours, theirs in pairs:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        if src not in state:
            raise MoelabError(f"weights lack {src!r}; the checkpoint does not fit its config")
        out[dst] = state[src]
    return out


def registry() -> list[HFClass]:
    from moelab.interop import hf_llama, hf_moe, hf_xglm

    return [hf_xglm.XGLM, hf_llama.LLAMA, hf_moe.MIXTRAL, hf_moe.QWEN2_MOE]


def class_for_model(cfg: ModelConfig) -> HFClass:
    """The stock class that computes ``cfg`` exactly in eval mode; otherwise a MoelabError that
    says in one line why none does."""
    from moelab.interop import hf_llama, hf_moe, hf_xglm

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
        candidates = [hf_moe.MIXTRAL, hf_moe.QWEN2_MOE]
    reasons = []
    for cls in candidates:
        why = cls.misfit(cfg)
        if why is None:
            return cls
        reasons.append(f"{cls.name} {why}")
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
