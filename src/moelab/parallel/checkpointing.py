"""Activation checkpointing per transformer block (``parallel.activation_checkpointing``);
docs/distributed.md is the one account of its memory, its cost and why the numbers stay
bitwise the same (the recomputation restores the forward's random and autocast state).

The block's own ``forward`` is replaced on the instance, where torch's ``checkpoint_wrapper``
would insert a ``_checkpoint_wrapped_module`` level: parameter and module names, types and the
state dict stay the plain model's, so initialisation, checkpoints, optimizer groups and
telemetry see the same model with or without it.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation: nothing is saved, nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Make every transformer block of ``model`` (``model.layers``) recompute its forward in
    backward, in place; returns ``model``."""
    for block in model.layers:
        plain = type(block).forward.__get__(block)  # the class's forward, bound to the block
        block.forward = functools.partial(_checkpointed, plain)
    return model
