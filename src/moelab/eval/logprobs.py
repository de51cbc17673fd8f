"""What a scoring pass works on and returns: a :class:`Request` (context and continuation token
ids), its :class:`Scored` log-probabilities, the :class:`ForwardStats` of the work done, and
:func:`split_scores`, which turns the logits at every target position into per-request scores.
Shared by the packed path (:mod:`moelab.eval.scoring`) and the shared-context path
(:mod:`moelab.eval.shared`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BATCH_TOKENS = 8192  # padded tokens per scoring batch, unless the caller says otherwise


@dataclass(frozen=True)
class Request:
    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]


@dataclass
class Scored:
    logprobs: np.ndarray  # float64, one per continuation token
    greedy: bool  # every continuation token is the argmax of its prediction


@dataclass
class ForwardStats:
    """Work done by :func:`score_requests` (``tokens``: real tokens through the model,
    ``padded_tokens``: including right padding)."""

    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    max_dropped_frac: float = 0.0  # largest fraction of MoE assignments dropped in a batch
    capacity: int | None = None  # MoE slots per expert in the last batch (None: dropless)


def split_scores(logits_NV: torch.Tensor, targets: list[int], counts: list[int]) -> list[Scored]:
    """Per-request log-probs and greedy hits from the logits of all their target positions."""
    logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    target_N = torch.tensor(targets, device=logp_NV.device)
    lp_N = logp_NV.gather(1, target_N[:, None])[:, 0].double().cpu().numpy()
    hit_N = (logp_NV.argmax(-1) == target_N).cpu().numpy()
    out, start = [], 0
    for n in counts:
        out.append(Scored(lp_N[start : start + n].copy(), bool(hit_N[start : start + n].all())))
        start += n
    return out
