"""The contract every supported Hugging Face class meets (:class:`HFClass`, one field per part)
and the helpers the family modules (``hf_xglm``, ``hf_llama``, ``hf_moe``, ``hf_glm4_moe``)
share; :mod:`moelab.interop.hf_classes` chooses among them. The key mapping is between moelab's
state dict and the HF module's *in-memory* one: the on-disk layout of each class (e.g.
Mixtral's per-expert tensors) is left to ``save_pretrained`` / ``from_pretrained``, so a folder
written here loads wherever that class loads.
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


def by_name(pairs: Callable[[ModelConfig], list[tuple[str, str]]]) -> dict[str, Callable]:
    """``to_hf`` and ``from_hf`` of a family whose weights map one to one by name (``pairs``:
    moelab name, HF name), its output head tied to the embedding."""

    def to_hf(state: State, cfg: ModelConfig) -> State:
        out = rename(state, pairs(cfg))
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied
        return out

    return {"to_hf": to_hf, "from_hf": lambda state, cfg: rename(state, pairs(cfg), reverse=True)}
