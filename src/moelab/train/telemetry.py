"""Per-MoE-layer routing telemetry, aggregated over a logging interval (fairseq's set; every
figure of a metrics row's ``moe`` entry is described in docs/training.md, *RUN_DIR*). Per
forward pass (one micro-batch) and layer the model's :class:`MoeStats` are reduced on the
device, without a host sync, and averaged over the interval when a row is written.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moelab.model.moe import load_balance

# The per-forward scalars after the K overflow percentages, in the order add() sums them.
_SCALARS = ("gate_entropy", "top20_share", "bottom20_share", "unused_experts", "max_over_mean_load")


class _LayerAccumulator:
    def __init__(self, layer: int, n_experts: int, top_k: int, device: torch.device):
        self.layer = layer
        self.n_experts = n_experts
        self.top_k = top_k
        # Scalars per forward, summed: overflow (K), then _SCALARS.
        self.scalars = torch.zeros(top_k + len(_SCALARS), dtype=torch.float64, device=device)
        self.routed_E = torch.zeros(n_experts, dtype=torch.int64, device=device)
        self.kept_E = torch.zeros(n_experts, dtype=torch.int64, device=device)
        self.count = 0

    def add(self, stats: Any) -> None:
        E, K = self.n_experts, self.top_k
        routed_E = stats.tokens_routed_E.to(self.routed_E.device)
        self.routed_E += routed_E
        self.kept_E += stats.tokens_kept_E.to(self.kept_E.device)
        load_E = routed_E.double()
        total = load_E.sum().clamp_min(1.0)
        n20 = max(1, math.ceil(0.2 * E))
        sorted_E = torch.sort(load_E, descending=True).values
        row = torch.cat(
            [
                stats.dropped_frac_K.double().to(self.scalars.device).reshape(-1)[:K] * 100.0,
                stats.gate_entropy.double().reshape(1).to(self.scalars.device),
                (sorted_E[:n20].sum() / total).reshape(1),
                (sorted_E[-n20:].sum() / total).reshape(1),
                (load_E == 0).sum().double().reshape(1),
                (sorted_E[0] / (total / E)).reshape(1),
            ]
        )
        self.scalars += row
        self.count += 1

    def summary(self) -> dict[str, Any]:
        vals = (self.scalars / max(1, self.count)).tolist()
        names = [f"overflow_pct_{r + 1}" for r in range(self.top_k)] + list(_SCALARS)
        out: dict[str, Any] = {"layer": self.layer, **dict(zip(names, vals))}
        out.update(
            tokens_per_expert=self.routed_E.tolist(),
            tokens_kept_per_expert=self.kept_E.tolist(),
        )
        return with_load_balance(out)


def with_load_balance(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``max_vio`` and ``dead_experts`` of its ``tokens_per_expert``."""
    max_vio, dead = load_balance(torch.tensor(row["tokens_per_expert"]))
    return {**row, "max_vio": float(max_vio), "dead_experts": int(dead)}


class MoeTelemetry:
    """Collects :class:`MoeStats` lists from every forward pass; ``flush()`` returns one summary
    per MoE layer (in layer order) and starts a new interval."""

    def __init__(self, n_experts: int, top_k: int, device: torch.device):
        self.n_experts = n_experts
        self.top_k = top_k
        self.device = device
        self._layers: dict[int, _LayerAccumulator] = {}

    def add(self, stats_list: list[Any]) -> None:
        for stats in stats_list:
            acc = self._layers.get(stats.layer)
            if acc is None:
                acc = _LayerAccumulator(stats.layer, self.n_experts, self.top_k, self.device)
                self._layers[stats.layer] = acc
            acc.add(stats)

    def flush(self) -> list[dict[str, Any]]:
        out = [self._layers[k].summary() for k in sorted(self._layers)]
        self._layers = {}
        return out
