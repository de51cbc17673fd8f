"""The transformer LM (paper and modern architectures) and its MoE layer."""

from moelab.model.build import build_model
from moelab.model.init import init_weights
from moelab.model.kv_cache import KVCache
from moelab.model.moe import (
    DispatchPlan,
    Experts,
    MoeFFN,
    MoeStats,
    Routing,
    combine,
    expert_capacity,
    plan_dispatch,
    route,
)
from moelab.model.transformer import LanguageModel, ModelOutput

__all__ = [
    "DispatchPlan",
    "Experts",
    "KVCache",
    "LanguageModel",
    "ModelOutput",
    "MoeFFN",
    "MoeStats",
    "Routing",
    "build_model",
    "combine",
    "expert_capacity",
    "init_weights",
    "plan_dispatch",
    "route",
]
