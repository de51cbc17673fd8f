"""Aggregate per-rank training telemetry into one metrics row (collective, every rank calls).

Each rank routes its own tokens, so its MoE telemetry describes its share of the batch. A row
written by rank 0 must describe the whole batch: expert loads (``tokens_per_expert``,
``tokens_kept_per_expert``) are summed over ranks, the per-forward averages (overflow %, gate
entropy, top/bottom-20% shares, unused experts, max/mean load) are averaged over ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def reduce_moe_rows(layers: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Combine the per-layer telemetry dicts of all ranks (same layers, same keys on every
    rank): lists (the expert loads) are summed, other numbers averaged, ``layer`` kept."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return layers
    world = dist.get_world_size()
    flat: list[float] = []
    for layer in layers:
        for key, value in layer.items():
            if key == "layer":
                continue
            if isinstance(value, list):
                flat.extend(float(v) for v in value)
            else:
                flat.append(float(value))
    t = torch.tensor(flat, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    summed = t.tolist()
    out, i = [], 0
    for layer in layers:
        row: dict[str, Any] = {}
        for key, value in layer.items():
            if key == "layer":
                row[key] = value
            elif isinstance(value, list):
                row[key] = [round(v) for v in summed[i : i + len(value)]]
                i += len(value)
            else:
                row[key] = summed[i] / world
                i += 1
        out.append(row)
    return out
