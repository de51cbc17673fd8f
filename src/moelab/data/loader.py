"""Batches for training (a seeded, weighted mixture of domains) and for evaluation (every token of
a split exactly once): docs/data.md, "Training batches" and "Evaluation batches".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from moelab.data.shards import PreparedData
from moelab.errors import MoelabError


class TrainStream:
    """Fixed-length training sequences from a weighted mixture of the training domains.

    ``weights``: ``{domain: weight}``, unnormalised, missing = 0; default: by train tokens.
    """

    def __init__(
        self,
        data: PreparedData,
        seq_len: int,
        batch_size: int,
        seed: int,
        weights: Mapping[str, float] | None = None,
    ):
        if seq_len < 1 or batch_size < 1:
            raise MoelabError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if seed < 0:
            raise MoelabError(f"seed must be >= 0, got {seed}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        if weights is None:
            weights = {d: data.num_tokens(d, "train") for d in data.train_domains}
        unknown = sorted(set(weights) - set(data.train_domains))
        if unknown:
            raise MoelabError(
                f"data weights name {', '.join(unknown)}, which are not training domains "
                f"(training domains: {', '.join(data.train_domains)})"
            )
        bad = {d: w for d, w in weights.items() if not (w >= 0 and np.isfinite(w))}
        if bad:
            raise MoelabError(f"data weights must be finite and >= 0, got {bad}")
        self.domains = [d for d in data.train_domains if weights.get(d, 0) > 0]
        if not self.domains:
            raise MoelabError("data weights are all zero; give at least one domain a weight > 0")
        w = np.array([float(weights[d]) for d in self.domains])
        self.probs = w / w.sum()
        self._cum = np.cumsum(self.probs)
        self._tokens = [data.tokens(d, "train") for d in self.domains]
        for d, toks in zip(self.domains, self._tokens):
            if len(toks) < seq_len + 1:
                raise MoelabError(
                    f"domain {d!r} has {len(toks)} train tokens, fewer than seq_len + 1 = "
                    f"{seq_len + 1}; lower seq_len or give it weight 0"
                )
        self._n_starts = np.array([len(t) - seq_len for t in self._tokens], dtype=np.int64)

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.domains, self.probs.tolist()))

    def plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(domain index per row ``domain_B``, start position per row ``start_B``) of the
        global batch at ``step``."""
        if step < 0:
            raise MoelabError(f"step must be >= 0, got {step}")
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        u_dom_B = rng.random(self.batch_size)
        u_pos_B = rng.random(self.batch_size)
        domain_B = np.minimum(
            np.searchsorted(self._cum, u_dom_B, side="right"), len(self.domains) - 1
        )
        start_B = np.floor(u_pos_B * self._n_starts[domain_B]).astype(np.int64)
        return domain_B, start_B

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """LongTensor ``(batch_size // world, seq_len + 1)``: rows ``rank::world`` of the global
        batch at ``step``. Inputs are ``[:, :-1]``, next-token targets ``[:, 1:]``."""
        if world < 1 or not 0 <= rank < world:
            raise MoelabError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        if self.batch_size % world:
            raise MoelabError(
                f"batch_size {self.batch_size} is not divisible by the world size {world}"
            )
        domain_B, start_B = self.plan(step)
        rows = [
            np.asarray(self._tokens[d][s : s + self.seq_len + 1], dtype=np.int64)
            for d, s in zip(domain_B[rank::world], start_B[rank::world])
        ]
        return torch.from_numpy(np.stack(rows))


@dataclass
class EvalBatch:
    """One evaluation batch. Score ``logits(inputs_BT)`` against ``targets_BT`` where
    ``mask_BT`` is True; padded positions (mask False) never count."""

    inputs_BT: torch.Tensor  # int64
    targets_BT: torch.Tensor  # int64
    mask_BT: torch.Tensor  # bool

    @property
    def n_tokens(self) -> int:
        return int(self.mask_BT.sum())


def eval_windows(
    tokens: np.ndarray | torch.Tensor,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None = None,
    *,
    bos_id: int | None = None,
    pad_id: int = 0,
) -> Iterator[EvalBatch]:
    """Cover ``tokens[:max_tokens]`` once with non-overlapping windows of ``seq_len`` predictions.

    The first token is a target only with ``bos_id``; the last window is padded (``pad_id``, mask
    False). Details: docs/data.md, "Evaluation batches".
    """
    if seq_len < 1 or batch_size < 1:
        raise MoelabError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    stream = np.asarray(tokens[:max_tokens])
    if bos_id is None:
        inputs, targets = stream[:-1], stream[1:]
    else:
        inputs = np.concatenate([np.asarray([bos_id], dtype=stream.dtype), stream[:-1]])
        targets = stream
    n = len(targets)
    n_windows = -(-n // seq_len)
    for first in range(0, n_windows, batch_size):
        rows = min(batch_size, n_windows - first)
        lo, hi = first * seq_len, min(n, (first + rows) * seq_len)
        inputs_BT = torch.full((rows * seq_len,), pad_id, dtype=torch.int64)
        targets_BT = torch.full((rows * seq_len,), pad_id, dtype=torch.int64)
        mask_BT = torch.zeros(rows * seq_len, dtype=torch.bool)
        inputs_BT[: hi - lo] = torch.from_numpy(inputs[lo:hi].astype(np.int64))
        targets_BT[: hi - lo] = torch.from_numpy(targets[lo:hi].astype(np.int64))
        mask_BT[: hi - lo] = True
        yield EvalBatch(
            inputs_BT.view(rows, seq_len),
            targets_BT.view(rows, seq_len),
            mask_BT.view(rows, seq_len),
        )
