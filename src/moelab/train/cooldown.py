"""Cooldown branches of a WSD run: fork, decay to the floor, evaluate, forget. A snapshot holds
everything an update changes (weights, optimizer moments and step counts, every random
generator) and is copied back in place after the branch, so the main run continues bitwise as
if the branch had never run (docs/training.md, *Warmup-stable-decay and cooldown branches*).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moelab.train.rng import rng_state, set_rng_state


@dataclass
class Snapshot:
    weights: dict[str, torch.Tensor]
    optimizer: list[dict[str, Any]]  # per parameter (in param-group order): its state, cloned
    rng: dict[str, Any]


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def take_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
    return Snapshot(
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer=[
            {k: _clone(v) for k, v in optimizer.state.get(p, {}).items()}
            for p in _optimizer_params(optimizer)
        ],
        rng=rng_state(),
    )


@torch.no_grad()
def restore_snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, snap: Snapshot) -> None:
    """Copy the snapshot back into the very tensors the model and optimizer hold (in place, so
    references elsewhere, e.g. a fused optimizer's or a sharded wrapper's, stay valid)."""
    current = model.state_dict()
    for name, saved in snap.weights.items():
        current[name].copy_(saved)
    for p, saved in zip(_optimizer_params(optimizer), snap.optimizer):
        state = optimizer.state.get(p)
        if not saved:  # the parameter had no state at the fork: drop what the branch made
            optimizer.state.pop(p, None)
            continue
        for k, v in saved.items():
            if isinstance(v, torch.Tensor) and isinstance(state.get(k), torch.Tensor):
                state[k].copy_(v)
            else:
                state[k] = _clone(v)
    set_rng_state(snap.rng)
