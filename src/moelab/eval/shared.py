"""Shared contexts: run a context once into a KV cache, then all of its continuations from it.

Multiple-choice items score several candidates after the same context (and few-shot prompts
make that context long). Instead of one full sequence per candidate, the context runs once with
batch 1, its cached keys/values are repeated for the C candidates, and the C continuations run
as one right-padded batch that attends to the cache. The logits are the same as those of the
full sequences (the model numbers positions from the cache length), so the scores agree with
the packed path to float rounding; MoE layers must be dropless for that (capacity would depend
on the batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moelab.eval.scoring import ForwardStats, Request, Scored, split_scores


def shared_groups(
    requests: Sequence[Request], max_len: int, min_saved: int
) -> tuple[list[tuple[tuple[int, ...], list[tuple[int, ...]]]], list[Request]]:
    """(groups worth sharing as (context, continuations), the remaining requests)."""
    by_context: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for r in requests:
        by_context.setdefault(r.context_ids, []).append(r.continuation_ids)
    groups, rest = [], []
    for ctx, conts in by_context.items():
        fits = len(ctx) + max(len(c) for c in conts) - 1 <= max_len
        if len(conts) > 1 and fits and (len(conts) - 1) * len(ctx) >= min_saved:
            groups.append((ctx, conts))
        else:
            rest += [Request(ctx, c) for c in conts]
    return groups, rest


def _repeat_cache(cache, cfg, copies: int, device):
    """A new cache holding ``copies`` rows of the batch-1 ``cache``."""
    from moelab.model import KVCache

    head_dim = cfg.d_model // cfg.n_heads
    # Appending zero new positions returns views of everything cached (KVCache.append).
    none_1H0d = torch.empty((1, cfg.n_heads, 0, head_dim), device=device)
    big = KVCache()
    for layer in range(cfg.n_layers):
        k, v = cache.append(layer, none_1H0d, none_1H0d)
        big.append(layer, k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1))
    big.advance(cache.length)
    return big


def score_shared(
    model: torch.nn.Module,
    context_ids: tuple[int, ...],
    continuations: list[tuple[int, ...]],
    device: torch.device | str,
    pad_id: int,
    stats: ForwardStats,
) -> list[Scored]:
    from moelab.model import KVCache

    cache = KVCache()
    ctx_1T = torch.tensor([list(context_ids)], dtype=torch.long, device=device)
    out = model(ctx_1T, kv_cache=cache, return_hidden=True, return_logits=False)
    h_last_D = out.hidden_BTD[0, -1]  # predicts every continuation's first token
    C = len(continuations)
    T = max(len(c) for c in continuations) - 1  # continuation inputs: all but the last token
    hidden_rows = []
    if T > 0:
        big = _repeat_cache(cache, model.cfg, C, device)
        tokens_CT = torch.full((C, T), pad_id, dtype=torch.long)
        for b, cont in enumerate(continuations):
            tokens_CT[b, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        h_CTD = model(
            tokens_CT.to(device), kv_cache=big, return_hidden=True, return_logits=False
        ).hidden_BTD
    targets: list[int] = []
    for b, cont in enumerate(continuations):
        hidden_rows.append(h_last_D[None])
        if len(cont) > 1:
            hidden_rows.append(h_CTD[b, : len(cont) - 1])
        targets += cont
    h_ND = torch.cat(hidden_rows)
    logits_NV = torch.nn.functional.linear(h_ND, model.embed.weight).float()
    stats.batches += 1
    stats.sequences += C
    stats.tokens += len(context_ids) + sum(len(c) - 1 for c in continuations)
    stats.padded_tokens += len(context_ids) + C * T
    return split_scores(logits_NV, targets, [len(c) for c in continuations])
