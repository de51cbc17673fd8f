"""Shared contexts: run a context once into a KV cache, then all of its continuations from it.

The logits equal those of the full sequences (the model numbers positions from the cache
length) only while MoE layers are dropless: a capacity would depend on the batch.
When this path is used: docs/evaluation.md, "Batching".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moelab.eval.logprobs import ForwardStats, Request, Scored, split_scores
from moelab.model import KVCache


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
    head_dim = cfg.d_model // cfg.n_heads
    # Appending zero new positions returns views of everything cached (KVCache.append).
    none_1H0d = torch.empty((1, cfg.n_heads, 0, head_dim), device=device)
    big = KVCache()
    for layer in range(cfg.n_layers):
        k, v = cache.append(layer, none_1H0d, none_1H0d)
        big.append(layer, k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1))
    big.advance(cache.length)
    return big


def continuation_batches(
    context_len: int, continuations: Sequence[tuple[int, ...]], batch_tokens: int
) -> list[range]:
    """Consecutive groups of continuations whose batch holds at most ``batch_tokens`` padded
    positions, counting the repeated cache: rows * (context_len + longest input) <= batch_tokens
    (one row at least). Every cached key/value, hidden state and logit of a batch scales with
    that number, so an item with 10^4 choices no longer takes memory in proportion to them."""
    groups, first, longest = [], 0, 0
    for i, cont in enumerate(continuations):
        t = max(longest, len(cont) - 1)
        if i > first and (i + 1 - first) * (context_len + t) > batch_tokens:
            groups.append(range(first, i))
            first, t = i, len(cont) - 1
        longest = t
    groups.append(range(first, len(continuations)))
    return groups


def score_shared(
    model: torch.nn.Module,
    context_ids: tuple[int, ...],
    continuations: list[tuple[int, ...]],
    device: torch.device | str,
    pad_id: int,
    stats: ForwardStats,
    batch_tokens: int,
) -> list[Scored]:
    """Scores of every continuation after ``context_ids``: the context runs once, then the
    continuations in batches of at most ``batch_tokens`` (:func:`continuation_batches`)."""
    cache = KVCache()
    ctx_1T = torch.tensor([list(context_ids)], dtype=torch.long, device=device)
    out = model(ctx_1T, kv_cache=cache, return_hidden=True, return_logits=False)
    h_last_D = out.hidden_BTD[0, -1]  # predicts every continuation's first token
    stats.tokens += len(context_ids)
    stats.padded_tokens += len(context_ids)
    scored: list[Scored] = []
    for group in continuation_batches(len(context_ids), continuations, batch_tokens):
        conts = [continuations[i] for i in group]
        scored += _score_after(model, cache, h_last_D, conts, device, pad_id, stats)
    return scored


def _score_after(model, cache, h_last_D, continuations, device, pad_id, stats) -> list[Scored]:
    """One batch of continuations after the cached context (the cache itself is left as is:
    :func:`_repeat_cache` copies it)."""
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
    stats.tokens += sum(len(c) - 1 for c in continuations)
    stats.padded_tokens += C * T
    return split_scores(logits_NV, targets, [len(c) for c in continuations])
