"""Routing in the corners where moelab once differed from fairseq's gates: router logits whose
probabilities underflow to 0 (rank >= 2 must follow the logits), and top-1 capacity rounding.

The reference below is fairseq's ``top1gating`` / ``top2gating`` (``moe`` branch,
fairseq/modules/moe/top1gate.py and top2gate.py) re-written here line by line for the training
path with ``second_expert_policy`` other than sampling/random, no padding mask, no
batch-prioritised routing and ``normalize_gate_prob_before_dropping=False`` (the paper's setup).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moelab.config import ModelConfig
from moelab.model.moe import MoeFFN, expert_capacity, route


def fairseq_capacity(S: int, E: int, k: int, capacity_factor: float = 1.0) -> int:
    if k == 1:
        return int(capacity_factor * math.ceil(S / E))  # top1gating
    return 2 * math.ceil(S / E)  # top2gating: no capacity factor


def fairseq_gating(logits: torch.Tensor, k: int, capacity: int) -> dict[str, torch.Tensor]:
    """fairseq's gating for k = 1 or 2: chosen experts, kept masks, locations, combine (S, E)
    weights and l_aux."""
    gates = F.softmax(logits.float(), dim=1)
    S, E = gates.shape
    indices1_s = torch.argmax(gates, dim=1)
    mask1 = F.one_hot(indices1_s, E)
    locations1 = torch.cumsum(mask1, dim=0) - 1
    me = torch.mean(gates, dim=0)
    ce = torch.mean(mask1.to(gates.dtype), dim=0)
    l_aux = torch.mean(me * ce) * E * E
    if k == 1:
        mask1 = mask1 * torch.lt(locations1, capacity)
        gates1_s = (gates * mask1).sum(dim=1)
        return {
            "experts": indices1_s[:, None],
            "kept": mask1.sum(1, keepdim=True).bool(),
            "locations": (locations1 * F.one_hot(indices1_s, E)).sum(1, keepdim=True),
            "combine": gates1_s[:, None] * mask1,
            "l_aux": l_aux,
        }
    logits_except1 = logits.float().masked_fill(mask1.bool(), float("-inf"))
    indices2_s = torch.argmax(logits_except1, dim=1)
    mask2 = F.one_hot(indices2_s, E)
    locations2 = torch.cumsum(mask2, dim=0) - 1
    locations2 = locations2 + torch.sum(mask1, dim=0, keepdim=True)
    loc1_s = (locations1 * mask1).sum(1)
    loc2_s = (locations2 * mask2).sum(1)
    mask1 = mask1 * torch.lt(locations1, capacity)
    mask2 = mask2 * torch.lt(locations2, capacity)
    gates1_s = (gates * mask1).sum(dim=1)
    gates2_s = (gates * mask2).sum(dim=1)
    denom_s = torch.clamp(gates1_s + gates2_s, min=torch.finfo(gates.dtype).eps)
    gates1_s, gates2_s = gates1_s / denom_s, gates2_s / denom_s
    return {
        "experts": torch.stack([indices1_s, indices2_s], 1),
        "kept": torch.stack([mask1.sum(1), mask2.sum(1)], 1).bool(),
        "locations": torch.stack([loc1_s, loc2_s], 1),
        "combine": gates1_s[:, None] * mask1 + gates2_s[:, None] * mask2,
        "l_aux": l_aux,
    }


def assert_same_as_fairseq(logits_SE: torch.Tensor, k: int, capacity: int) -> None:
    ref = fairseq_gating(logits_SE, k, capacity)
    got = route(logits_SE, k, capacity)
    S, E = logits_SE.shape
    assert got.expert_SK.tolist() == ref["experts"].tolist()
    assert got.kept_SK.tolist() == ref["kept"].tolist()
    assert got.slot_SK.tolist() == ref["locations"].tolist()
    combine_SE = torch.zeros(S, E).scatter_add_(1, got.expert_SK, got.combine_SK.detach())
    torch.testing.assert_close(combine_SE, ref["combine"].float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.aux_loss.detach(), ref["l_aux"], rtol=1e-6, atol=1e-7)


def test_issue_example_underflowing_second_choice():
    # Token 0 puts all its probability on expert 0: the others underflow to exactly 0.0 in
    # float32 (gaps >= 150), yet fairseq's second choice is the largest remaining *logit*
    # (expert 3), not the lowest index among the zeros (expert 1).
    logits = torch.tensor(
        [
            [0.0, -200.0, -300.0, -150.0],
            [-200.0, 0.0, -300.0, -5.0],
            [-200.0, 0.0, -300.0, -5.0],
        ]
    )
    probs = torch.softmax(logits, -1)
    assert probs[0, 1:].tolist() == [0.0, 0.0, 0.0]  # the corner this test is about
    capacity = fairseq_capacity(3, 4, 2)
    assert capacity == 2 == expert_capacity(3, 4, 2, 1.0)
    got = route(logits, 2, capacity)
    assert got.expert_SK.tolist() == [[0, 3], [1, 3], [1, 3]]
    # Token 0's zero-weight second assignment takes expert 3's first slot, so token 2's real
    # second choice is dropped: fairseq's behaviour, kept.
    assert got.kept_SK.tolist() == [[True, True], [True, True], [True, False]]
    assert_same_as_fairseq(logits, 2, capacity)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("k", [1, 2])
def test_random_huge_gaps_match_fairseq(seed, k):
    # Logit gaps of hundreds: most probabilities underflow, many exact-zero ties.
    g = torch.Generator().manual_seed(seed)
    S, E = 3 + seed % 29, 2 + seed % 7
    logits = torch.randn(S, E, generator=g) * 300.0
    if seed % 3 == 0:  # plus some exact logit ties
        logits[:, 1] = logits[:, 0]
    capacity = fairseq_capacity(S, E, k)
    assert expert_capacity(S, E, k, 1.0) == capacity
    assert_same_as_fairseq(logits, k, capacity)


@pytest.mark.parametrize("S,E", [(10, 4), (7, 2), (96, 8), (3, 4), (1000, 7)])
def test_top1_capacity_rounds_as_fairseq(S, E):
    cf = 1.5
    expected = int(cf * math.ceil(S / E))
    assert expert_capacity(S, E, 1, cf) == max(1, expected)
    assert expert_capacity(10, 4, 1, 1.5) == 4  # int(4.5); ceil would give 5
    g = torch.Generator().manual_seed(S * E)
    # Skewed router so capacity binds: expert 0 is everyone's favourite half of the time.
    logits = torch.randn(S, E, generator=g)
    logits[::2, 0] += 4.0
    assert_same_as_fairseq(logits, 1, expected)


def test_top1_capacity_keeps_one_slot_where_fairseq_would_have_none():
    # int(0.5 * ceil(3 / 4)) = 0: fairseq would build a zero-slot one_hot and fail.
    assert fairseq_capacity(3, 4, 1, 0.5) == 0
    assert expert_capacity(3, 4, 1, 0.5) == 1


def test_moe_layer_uses_top1_capacity_at_cf_1_5():
    cfg = ModelConfig(
        arch="paper",
        vocab_size=32,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_ffn=32,
        n_experts=4,
        top_k=1,
        capacity_factor=1.5,
        dropout=0.0,
        attn_dropout=0.0,
    ).validate()
    layer = MoeFFN(cfg, layer=1).train()
    with torch.no_grad():
        # Router on feature 0 only: its sign sends a token to expert 0 or expert 1.
        layer.gate.weight.zero_()
        layer.gate.weight[0, 0], layer.gate.weight[1, 0] = 5.0, -5.0
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    x[..., 0] = torch.tensor([1.0, -1.0]).repeat(5).view(2, 5)  # 5 tokens each way
    out = layer(x)
    # S = 10, E = 4: int(1.5 * 3) = 4 slots (ceil would give 5 and keep every token).
    assert out.stats.capacity == 4
    assert out.stats.tokens_routed_E.tolist() == [5, 5, 0, 0]
    assert out.stats.tokens_kept_E.tolist() == [4, 4, 0, 0]
    ref = fairseq_gating(layer.router_logits(x.reshape(10, 16)).detach(), 1, 4)
    kept_E = torch.bincount(ref["experts"][ref["kept"]], minlength=4)
    assert out.stats.tokens_kept_E.tolist() == kept_E.tolist()
