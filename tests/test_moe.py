"""MoE layer: routing against a slow reference, balancing loss, dispatch vs dense computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.model.grouped import grouped_ffn, grouped_linear
from moelab.model.moe import Experts, MoeFFN, expert_capacity, plan_dispatch, route

# ---------------------------------------------------------------------------------------------
# The obviously-correct reference: plain Python loops over tokens.


def reference_route(logits: list[list[float]], k: int, capacity: int | None):
    """Returns (experts[s][r], slots[s][r], kept[s][r], combine[s][r]) with fairseq semantics."""
    S, E = len(logits), len(logits[0])
    probs = []
    for row in logits:
        m = max(row)
        ex = [math.exp(v - m) for v in row]
        z = sum(ex)
        probs.append([v / z for v in ex])
    experts = []
    for s in range(S):
        taken: list[int] = []
        for _ in range(k):
            best = None
            for e in range(E):  # strict '>' keeps the lowest index among ties
                if e in taken:
                    continue
                if best is None or probs[s][e] > probs[s][best]:
                    best = e
            taken.append(best)
        experts.append(taken)
    used = [0] * E
    slots = [[0] * k for _ in range(S)]
    kept = [[False] * k for _ in range(S)]
    for r in range(k):  # rank-major: all first choices in token order, then second, ...
        for s in range(S):
            e = experts[s][r]
            slots[s][r] = used[e]
            kept[s][r] = capacity is None or used[e] < capacity
            used[e] += 1
    combine = []
    for s in range(S):
        w = [probs[s][experts[s][r]] if kept[s][r] else 0.0 for r in range(k)]
        if k > 1:
            total = sum(w)
            w = [v / total if total > 0 else 0.0 for v in w]
        combine.append(w)
    return experts, slots, kept, combine


def check_against_reference(logits_SE: torch.Tensor, k: int, capacity: int | None) -> None:
    routing = route(logits_SE, k, capacity)
    experts, slots, kept, comb = reference_route(logits_SE.double().tolist(), k, capacity)
    assert routing.expert_SK.tolist() == experts
    assert routing.slot_SK.tolist() == slots
    assert routing.kept_SK.tolist() == kept
    torch.testing.assert_close(
        routing.combine_SK, torch.tensor(comb, dtype=torch.float32), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("cf", [None, 1.0, 0.5])
def test_route_matches_reference_random_logits(k, cf):
    g = torch.Generator().manual_seed(k * 10 + int((cf or 0) * 4))
    S, E = 37, 6
    logits = torch.randn(S, E, generator=g) * 2
    check_against_reference(logits, k, expert_capacity(S, E, k, cf))


@pytest.mark.parametrize("k", [1, 2])
def test_route_ties_go_to_lowest_expert(k):
    # Rows with exact ties: all equal, pairs equal, and the top value tied with a later one.
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 2.0, 2.0, 0.0],
            [3.0, 1.0, 3.0, 3.0],
            [0.5, 0.5, 0.1, 0.5],
            [-1.0, 2.0, -1.0, 2.0],
        ]
    )
    routing = route(logits, k, None)
    expected_top2 = [[0, 1], [1, 2], [0, 2], [0, 1], [1, 3]]
    assert routing.expert_SK.tolist() == [row[:k] for row in expected_top2]
    check_against_reference(logits, k, None)
    check_against_reference(logits.repeat(5, 1), k, 2)


@pytest.mark.parametrize("k,capacity", [(1, 3), (2, 3), (2, 12), (3, 16)])
def test_overflow_every_expert(k, capacity):
    # 40 tokens, 4 experts: every expert is offered more assignments than it has slots.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 4, generator=g)
    routing = route(logits, k, capacity)
    offered_E = torch.bincount(routing.expert_SK.reshape(-1), minlength=4)
    assert (offered_E > capacity).all()
    kept_per_expert = torch.bincount(routing.expert_SK[routing.kept_SK], minlength=4)
    assert kept_per_expert.tolist() == [capacity] * 4
    check_against_reference(logits, k, capacity)
    # Dropped assignments weigh zero; a token with every assignment dropped contributes nothing
    # (residual only); for k >= 2 the kept weights of a token sum to one.
    assert (routing.combine_SK[~routing.kept_SK] == 0).all()
    any_kept = routing.kept_SK.any(dim=1)
    if capacity == 3:
        assert not any_kept.all()
    if k >= 2:
        sums = routing.combine_SK[any_kept].sum(1)
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_capacity_formula():
    assert expert_capacity(4096, 8, 2, 1.0) == 2 * math.ceil(4096 / 8)
    assert expert_capacity(10, 4, 2, 1.0) == 6
    assert expert_capacity(10, 4, 1, 1.25) == 3  # top-1: int(1.25 * 3), fairseq's Top1Gate
    assert expert_capacity(10, 4, 2, 1.1) == 7  # ceil(6.6); float noise must not round up
    assert expert_capacity(5, 4, 2, 1.1) == 5  # 1.1 * 2 * 2 = 4.4 -> 5
    assert expert_capacity(10, 4, 2, None) is None


# ---------------------------------------------------------------------------------------------
# Balancing loss


def test_aux_loss_uniform_is_one():
    E = 4
    logits = torch.zeros(8, E)  # uniform probabilities; ties -> all top-1 would go to expert 0
    # Make top-1 uniform while keeping probabilities (almost) uniform: tiny per-token nudges.
    for s in range(8):
        logits[s, s % E] = 1e-7
    r = route(logits, 1, None)
    assert torch.bincount(r.expert_SK[:, 0], minlength=E).tolist() == [2, 2, 2, 2]
    assert r.aux_loss.item() == pytest.approx(1.0, abs=1e-5)


def test_aux_loss_collapsed_is_E():
    E = 5
    logits = torch.full((6, E), -1e4)
    logits[:, 2] = 1e4  # every token to expert 2 with probability 1
    r = route(logits, 2, None)
    assert r.aux_loss.item() == pytest.approx(float(E), rel=1e-6)


def test_aux_loss_hand_computation_and_gradient():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.5]])
    w = logits.clone().requires_grad_(True)
    r = route(w, 2, None)
    p = torch.softmax(logits, -1)
    me = p.mean(0)
    ce = torch.tensor([2 / 4, 1 / 4, 1 / 4])  # top-1: 0, 1, 2, 0
    assert r.aux_loss.item() == pytest.approx(3 * float((me * ce).sum()), rel=1e-6)
    r.aux_loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # The gradient flows through me only: d/dlogits of 3 * sum(mean(p) * ce).
    w2 = logits.clone().requires_grad_(True)
    (3 * (torch.softmax(w2, -1).mean(0) * ce).sum()).backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_aux_gradient_reaches_router_weight_in_layer():
    cfg = tiny_moe_cfg(top_k=2)
    layer = MoeFFN(cfg, layer=1)
    torch.nn.init.normal_(layer.gate.weight, std=0.5)
    x = torch.randn(2, 5, cfg.d_model)
    layer(x).aux_loss.backward()
    assert layer.gate.weight.grad is not None and layer.gate.weight.grad.abs().sum() > 0


def test_z_loss_value():
    logits = torch.randn(6, 4)
    r = route(logits, 1, None)
    assert r.z_loss.item() == pytest.approx(float((torch.logsumexp(logits, -1) ** 2).mean()))


# ---------------------------------------------------------------------------------------------
# The layer


def tiny_moe_cfg(**kw) -> ModelConfig:
    base = dict(
        vocab_size=50,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_ffn=24,
        max_seq_len=32,
        n_experts=4,
        moe_every=1,
        top_k=2,
        dropout=0.0,
        attn_dropout=0.0,
    )
    base.update(kw)
    return ModelConfig(**base).validate()


def dense_reference(layer: MoeFFN, x_SD: torch.Tensor, routing) -> torch.Tensor:
    """Each token through each kept expert separately, weighted: no sorting, no batching."""
    ex = layer.experts
    out = torch.zeros_like(x_SD)
    for s in range(x_SD.shape[0]):
        for r in range(routing.expert_SK.shape[1]):
            if not routing.kept_SK[s, r]:
                continue
            e = int(routing.expert_SK[s, r])
            x = x_SD[s]
            if ex.arch == "paper":
                y = F.gelu(x @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]
            else:
                y = (F.silu(x @ ex.w1[e]) * (x @ ex.w3[e])) @ ex.w2[e]
            out[s] += routing.combine_SK[s, r] * y
    return out


@pytest.mark.parametrize("arch", ["paper", "modern"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dropless_layer_equals_dense_computation(arch, k):
    cfg = tiny_moe_cfg(arch=arch, top_k=k, capacity_factor=None, eval_capacity_factor=None)
    torch.manual_seed(k)
    layer = MoeFFN(cfg, layer=0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, cfg.d_model)
    out = layer(x)
    routing = route(layer.router_logits(x.reshape(-1, cfg.d_model)), k, None)
    assert routing.kept_SK.all()
    ref = dense_reference(layer, x.reshape(-1, cfg.d_model), routing)
    torch.testing.assert_close(out.y_BTD.reshape(-1, cfg.d_model), ref, rtol=1e-5, atol=1e-5)
    # Gradients reach every parameter that was used, router included.
    out.y_BTD.square().sum().backward()
    assert layer.gate.weight.grad.abs().sum() > 0
    assert layer.experts.w1.grad.abs().sum() > 0


def test_capacity_layer_equals_dense_computation_with_drops():
    cfg = tiny_moe_cfg(top_k=2, capacity_factor=0.5)
    torch.manual_seed(0)
    layer = MoeFFN(cfg, layer=0).train()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 9, cfg.d_model)
    out = layer(x)
    S = 18
    cap = expert_capacity(S, 4, 2, 0.5)
    routing = route(layer.router_logits(x.reshape(-1, cfg.d_model)), 2, cap)
    assert not routing.kept_SK.all()
    assert out.stats.capacity == cap
    ref = dense_reference(layer, x.reshape(-1, cfg.d_model), routing)
    torch.testing.assert_close(out.y_BTD.reshape(-1, cfg.d_model), ref, rtol=1e-5, atol=1e-5)
    # Stats agree with the routing.
    st = out.stats
    assert st.tokens_routed_E.sum().item() == 2 * S
    assert st.tokens_kept_E.sum().item() == int(routing.kept_SK.sum())
    assert (st.tokens_kept_E <= cap).all()
    dropped_K = (~routing.kept_SK).float().mean(0)
    torch.testing.assert_close(st.dropped_frac_K, dropped_K)
    # Eval mode is dropless by default; a finite eval_capacity_factor applies only in eval.
    layer.eval()
    assert layer(x).stats.capacity is None
    assert layer(x).stats.dropped_frac_K.sum().item() == 0
    layer.eval_capacity_factor = 0.25
    assert layer(x).stats.capacity == expert_capacity(S, 4, 2, 0.25)
    assert layer(x).stats.dropped_frac_K.sum().item() > 0
    layer.train()
    assert layer(x).stats.capacity == cap


def test_dispatch_plan_is_sorted_by_expert_and_slot():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 5, generator=g)
    routing = route(logits, 2, 8)
    plan = plan_dispatch(routing).kept()
    assert sum(plan.counts) == int(routing.kept_SK.sum())
    experts_N = torch.repeat_interleave(torch.arange(5), plan.counts_E)
    # Recover each assignment's (token, expert) and check slots increase within each expert.
    for e in range(5):
        tokens = plan.token_N[experts_N == e].tolist()
        ranks = [int((routing.expert_SK[t] == e).nonzero()) for t in tokens]
        slots = [int(routing.slot_SK[t, r]) for t, r in zip(tokens, ranks)]
        assert slots == list(range(len(slots)))


def test_policies_only_in_training_and_reproducible():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 8, generator=g)
    base = route(logits, 2, None, policy="all", training=True)
    # Not training: policies are ignored.
    for policy in ("sampling", "random"):
        r = route(logits, 2, None, policy=policy, training=False)
        assert torch.equal(r.expert_SK, base.expert_SK) and r.offered_SK.all()
    # sampling: expert 1 unchanged, expert 2 differs from argmax for some tokens, never == expert 1
    r1 = route(logits, 2, None, "sampling", torch.Generator().manual_seed(5), training=True)
    r2 = route(logits, 2, None, "sampling", torch.Generator().manual_seed(5), training=True)
    assert torch.equal(r1.expert_SK, r2.expert_SK)
    assert torch.equal(r1.expert_SK[:, 0], base.expert_SK[:, 0])
    assert (r1.expert_SK[:, 1] != r1.expert_SK[:, 0]).all()
    assert (r1.expert_SK[:, 1] != base.expert_SK[:, 1]).any()
    # random: expert 2 kept with probability 2 * g2 (clipped at 1); dropped rank-2 -> g1 weight 1
    r = route(logits, 2, None, "random", torch.Generator().manual_seed(5), training=True)
    g2 = base.probs_SE.gather(1, base.expert_SK)[:, 1]
    keep_rate = r.offered_SK[:, 1].float().mean().item()
    assert keep_rate == pytest.approx(float((2 * g2).clamp(max=1).mean()), abs=0.1)
    lone = ~r.offered_SK[:, 1]
    assert lone.any()
    torch.testing.assert_close(r.combine_SK[lone, 0], torch.ones(int(lone.sum())))


def test_policy_needs_top2():
    with pytest.raises(MoelabError, match="second_expert_policy"):
        MoeFFN(tiny_moe_cfg(top_k=1, second_expert_policy="random"), layer=0)


def test_gate_entropy_stat():
    cfg = tiny_moe_cfg()
    layer = MoeFFN(cfg, layer=3)
    torch.nn.init.zeros_(layer.gate.weight)  # uniform router: entropy log(E)
    out = layer(torch.randn(1, 4, cfg.d_model))
    assert out.stats.layer == 3
    assert out.stats.gate_entropy.item() == pytest.approx(math.log(4), rel=1e-5)
    assert out.stats.aux_loss.requires_grad is False


# ---------------------------------------------------------------------------------------------
# Grouped expert kernels


COUNTS = [3, 0, 4, 2]


def _double(*shape):
    return torch.randn(*shape, dtype=torch.double, requires_grad=True)


def test_grouped_linear_gradcheck():
    x, w, b = _double(9, 5), _double(4, 5, 7), _double(4, 7)
    assert torch.autograd.gradcheck(lambda x, w, b: grouped_linear(x, w, b, COUNTS), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: grouped_linear(x, w, None, COUNTS), (x, w))


def test_grouped_ffn_gradcheck():
    x, w1, b1, w2, b2, w3 = (
        _double(9, 5),
        _double(4, 5, 6),
        _double(4, 6),
        _double(4, 6, 5),
        _double(4, 5),
        _double(4, 5, 6),
    )

    def paper(x, w1, b1, w2, b2):
        return grouped_ffn(x, w1, b1, w2, b2, None, COUNTS)

    def modern(x, w1, w2, w3):
        return grouped_ffn(x, w1, None, w2, None, w3, COUNTS)

    assert torch.autograd.gradcheck(paper, (x, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(modern, (x, w1, w2, w3))
    with pytest.raises(ValueError, match="counts"):
        grouped_ffn(x, w1, b1, w2, b2, None, [1, 1, 1, 1])


@pytest.mark.parametrize("arch", ["paper", "modern"])
def test_experts_with_activation_dropout(arch):
    # Training with activation dropout takes the grouped_linear path; check it against a
    # per-row computation that draws the same dropout mask.
    torch.manual_seed(0)
    ex = Experts(4, 5, 6, arch, activation_dropout=0.5).train()
    for p in ex.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(9, 5)
    torch.manual_seed(1)
    out = ex(x, COUNTS)
    torch.manual_seed(1)
    mask = F.dropout(torch.ones(9, 6), 0.5, True)
    expert_of_row = torch.repeat_interleave(torch.arange(4), torch.tensor(COUNTS))
    ref = []
    for i, e in enumerate(expert_of_row.tolist()):
        if arch == "paper":
            h = F.gelu(x[i] @ ex.w1[e] + ex.b1[e]) * mask[i]
            ref.append(h @ ex.w2[e] + ex.b2[e])
        else:
            h = F.silu(x[i] @ ex.w1[e]) * (x[i] @ ex.w3[e]) * mask[i]
            ref.append(h @ ex.w2[e])
    torch.testing.assert_close(out, torch.stack(ref), rtol=1e-5, atol=1e-5)
    # Without dropout (eval) both paths agree exactly enough.
    ex.eval()
    fused = ex(x, COUNTS)
    ex.train()
    ex.activation_dropout = 0.0
    torch.testing.assert_close(ex(x, COUNTS), fused)


def test_second_choices_queue_after_every_first_choice():
    # fairseq order, and the reason capacity-limited top-2 is not strictly causal (docs/model.md):
    # token 0's second choice (expert 1) waits behind the first choices of later tokens 1 and 2.
    big = 5.0
    logits = torch.tensor([[big, 0.0, -big], [-big, big, 0.0], [-big, big, 0.0]])
    r = route(logits, 2, 2)
    assert r.expert_SK[0].tolist() == [0, 1] and r.slot_SK[0, 1].item() == 2
    assert not r.kept_SK[0, 1]
    later_changed = logits.clone()
    later_changed[2] = torch.tensor([big, 0.0, -big])  # token 2 now prefers expert 0
    r2 = route(later_changed, 2, 2)
    assert r2.kept_SK[0, 1]  # token 0's second choice now fits
