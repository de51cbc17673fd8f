"""Log-probabilities of continuations given contexts, batched, and the scores built from them.

Tokenization follows lm-evaluation-harness's ``_encode_pair`` so scores compare with the
harness; the rules and the modes: docs/evaluation.md, "Scoring: every mode in one pass".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moelab.errors import MoelabError
from moelab.eval.logprobs import BATCH_TOKENS, ForwardStats, Request, Scored, split_scores
from moelab.eval.shared import score_shared, shared_groups

Encode = Callable[[str], list[int]]

MODES = ("sum", "mean", "char", "byte", "calibrated")  # each defined in docs/evaluation.md


def encode_pair(
    encode: Encode, context: str, continuation: str, prefix_id: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of (context, continuation) as the harness's causal backend makes them."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    if not context:
        return (prefix_id,), tuple(encode(continuation))
    context_ids = encode(context)
    whole_ids = encode(context + continuation)
    continuation_ids = whole_ids[len(context_ids) :]
    if not continuation_ids:  # a merge swallowed the boundary; score the continuation alone
        continuation_ids = encode(continuation)
    return tuple(context_ids), tuple(continuation_ids)


# logits_at(tokens_BT, rows_N, positions_N) -> logits_NV for the requested (row, position) pairs
LogitsAt = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def model_logits_at(model: torch.nn.Module, stats: ForwardStats | None = None) -> LogitsAt:
    """Logits of a moelab LanguageModel at chosen positions only: the output projection runs on
    the gathered hidden states, so a batch never holds a (B, T, V) tensor."""

    def logits_at(tokens_BT, rows_N, positions_N):
        out = model(tokens_BT, return_hidden=True, return_logits=False, moe_stats=stats is not None)
        if stats is not None and out.moe_stats:
            stats.capacity = out.moe_stats[0].capacity
            dropped = max(float(s.dropped_frac_K.max()) for s in out.moe_stats)
            stats.max_dropped_frac = max(stats.max_dropped_frac, dropped)
        h_ND = out.hidden_BTD[rows_N, positions_N]
        return torch.nn.functional.linear(h_ND, model.embed.weight).float()

    return logits_at


def _batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped longest first so that padding is small and B * T_max <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, t_max = [], [], 0
    for i in order:
        t = max(t_max, lengths[i])
        if current and (t * (len(current) + 1) > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current, t = [], lengths[i]
        current.append(i)
        t_max = t
    if current:
        batches.append(current)
    return batches


def score_requests(
    requests: Sequence[Request],
    logits_at: LogitsAt,
    *,
    max_len: int,
    device: torch.device | str = "cpu",
    batch_tokens: int = BATCH_TOKENS,
    max_batch: int = 64,
    pad_id: int = 0,
    stats: ForwardStats | None = None,
    progress: Callable[[int], None] | None = None,
    shared_model: torch.nn.Module | None = None,
    min_shared_tokens: int = 32,
) -> list[Scored]:
    """Score every request once (duplicates are computed once). Each sequence is
    ``(context + continuation)[:-1]``, truncated on the left to ``max_len`` tokens, right-padded
    in its batch; padding sits after every real token, so causal attention never sees it.
    ``shared_model`` (a moelab LanguageModel) enables the shared-context path
    (:mod:`moelab.eval.shared`).
    """
    stats = stats if stats is not None else ForwardStats()
    advance = progress or (lambda n: None)
    unique: dict[Request, int] = {}
    for r in requests:
        if not r.continuation_ids:
            raise MoelabError("a candidate continuation encodes to no tokens; check the task file")
        if len(r.continuation_ids) > max_len:
            raise MoelabError(
                f"a continuation of {len(r.continuation_ids)} tokens exceeds the model's "
                f"context of {max_len}"
            )
        unique.setdefault(r, len(unique))
    keys = list(unique)
    results: dict[Request, Scored] = {}
    packed = keys
    if shared_model is not None:
        groups, packed = shared_groups(keys, max_len, min_shared_tokens)
        with torch.inference_mode():
            for context_ids, conts in groups:
                scored = score_shared(
                    shared_model, context_ids, conts, device, pad_id, stats, batch_tokens
                )
                for cont, sc in zip(conts, scored):
                    results[Request(context_ids, cont)] = sc
                advance(len(conts))
    scored = _score_packed(
        packed, logits_at, max_len, device, batch_tokens, max_batch, pad_id, stats, advance
    )
    results.update(zip(packed, scored))
    return [results[r] for r in requests]


def _score_packed(
    keys, logits_at, max_len, device, batch_tokens, max_batch, pad_id, stats, advance
) -> list[Scored]:
    seqs = [(r.context_ids + r.continuation_ids)[-(max_len + 1) :] for r in keys]
    inputs_len = [len(s) - 1 for s in seqs]
    results: list[Scored | None] = [None] * len(seqs)
    with torch.inference_mode():
        for batch in _batches(inputs_len, batch_tokens, max_batch):
            T = max(inputs_len[i] for i in batch)
            tokens_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
            rows, positions, targets, owners = [], [], [], []
            for b, i in enumerate(batch):
                seq, L = seqs[i], inputs_len[i]
                tokens_BT[b, :L] = torch.tensor(seq[:-1], dtype=torch.long)
                n = len(keys[i].continuation_ids)
                rows += [b] * n
                positions += range(L - n, L)
                targets += seq[-n:]
                owners.append((i, n))
            logits_NV = logits_at(
                tokens_BT.to(device),
                torch.tensor(rows, device=device),
                torch.tensor(positions, device=device),
            )
            for (i, _), sc in zip(owners, split_scores(logits_NV, targets, [n for _, n in owners])):
                results[i] = sc
            stats.batches += 1
            stats.sequences += len(batch)
            stats.tokens += sum(inputs_len[i] for i in batch)
            stats.padded_tokens += len(batch) * T
            advance(len(batch))
    return results  # type: ignore[return-value]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    for i in range(n):
        first = seqs[0][i]
        if any(s[i] != first for s in seqs[1:]):
            return i
    return n


@dataclass
class Candidate:
    request: Request
    scored: Scored
    target: str  # the candidate text without its delimiter (for per-char/byte normalisation)
    neutral: Scored | None = None  # the same continuation after the neutral prompt


def candidate_scores(cands: Sequence[Candidate]) -> dict[str, np.ndarray]:
    """Every scoring mode for the candidates of one item (higher is better)."""
    fulls = [c.request.context_ids + c.request.continuation_ids for c in cands]
    prefix = common_prefix_len(fulls) if len(cands) > 1 else 0
    out: dict[str, list[float]] = {m: [] for m in MODES}
    for c in cands:
        lp = c.scored.logprobs
        total = float(lp.sum())
        # Tokens after the common prefix: position ctx_len + j is continuation token j.
        skip = max(prefix - len(c.request.context_ids), 0)
        tail = lp[skip:] if skip < len(lp) else lp
        out["sum"].append(total)
        out["mean"].append(float(tail.mean()))
        out["char"].append(total / max(len(c.target), 1))
        out["byte"].append(total / max(len(c.target.encode("utf-8")), 1))
        neutral = float(c.neutral.logprobs.sum()) if c.neutral is not None else 0.0
        out["calibrated"].append(total - neutral)
    return {m: np.asarray(v) for m, v in out.items()}
