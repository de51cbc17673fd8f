"""Activation checkpointing per transformer block (``parallel.activation_checkpointing``).

A checkpointed block keeps only its input for backward and recomputes its forward there (torch's
non-reentrant ``torch.utils.checkpoint``, as torchtitan's "full" mode): activation memory drops
from every block's intermediates to one block's plus each block's input, for about one more
forward per step. The numbers do not change: the recomputation restores the random state the
forward saw (dropout masks and routing noise are drawn again identically) and the autocast
state, so losses and gradients equal the run without it (tests/test_parallel_checkpointing.py).

The block's own ``forward`` is replaced on the instance (torch's ``checkpoint_wrapper`` would
insert a ``_checkpoint_wrapped_module`` level instead): parameter and module names, types and
the state dict stay exactly those of the plain model, so initialisation, checkpoints,
optimizer groups and telemetry see the same model with or without it. Applied before
``fully_shard`` (:func:`moelab.parallel.fsdp.parallelize`), FSDP's hooks stay outside the
recomputed region, as with torchtitan's wrapper; one process applies it to the built model.
An expert-parallel layer's all-to-all runs again in the recomputation (its time counts in the
``all_to_all_s`` telemetry).
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
