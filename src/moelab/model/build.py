"""``build_model``: a :class:`LanguageModel` built from its config and initialised by
``cfg.init`` (:mod:`moelab.model.init`)."""

from __future__ import annotations

import torch

from moelab.config import ModelConfig
from moelab.model.init import init_weights
from moelab.model.transformer import LanguageModel


def build_model(cfg: ModelConfig, seed: int | None = None) -> LanguageModel:
    """Build and initialise a model by ``cfg.init`` (``seed`` fixes the initialisation; None
    uses torch's global RNG)."""
    cfg.validate()
    model = LanguageModel(cfg)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    init_weights(model, generator)
    return model
