"""Today's MoE designs (issue 17 items 1-3) against a slow reference written here: a loop over
tokens that routes, queues, drops, weights and sums one token at a time.

Covered: fine-grained experts (d_expert != d_ffn, any top_k), shared experts with and without
Qwen2-MoE's sigmoid gate, sigmoid scores (DeepSeek-V3), norm_topk on/off, route_scale, with
capacity and dropless, both architectures; and the identity users ask for: one expert, top-1,
no balancing loss, the dense FFN's width = the dense model.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from _designs import design_cfg
from moelab.config import ModelConfig
from moelab.model import build_model
from moelab.model.moe import MoeFFN, route

_cfg = functools.partial(design_cfg, n_experts=6)


def _layer(cfg: ModelConfig, seed: int = 0) -> MoeFFN:
    torch.manual_seed(seed)
    layer = MoeFFN(cfg, 0)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.5, 0.5)  # wide router logits: the choice matters
    return layer


def _expert(layer: MoeFFN, e: int, x_D: torch.Tensor) -> torch.Tensor:
    ex = layer.experts
    if ex.arch == "paper":
        return F.gelu(x_D @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]
    return (F.silu(x_D @ ex.w1[e]) * (x_D @ ex.w3[e])) @ ex.w2[e]


def _shared(layer: MoeFFN, x_D: torch.Tensor) -> torch.Tensor:
    sh = layer.shared
    if sh.arch == "paper":
        out = sh.fc2(F.gelu(sh.fc1(x_D)))
    else:
        out = sh.w2(F.silu(sh.w1(x_D)) * sh.w3(x_D))
    if layer.shared_gate is not None:
        out = torch.sigmoid(layer.shared_gate(x_D)) * out
    return out


def reference(layer: MoeFFN, cfg: ModelConfig, x_SD: torch.Tensor) -> torch.Tensor:
    """One token at a time: score, choose (sigmoid: by score + bias; softmax: rank 0 by
    probability, later ranks by logit), queue rank-major, drop past capacity, weight, sum."""
    S, E, K = x_SD.shape[0], cfg.n_experts, cfg.top_k
    cf = cfg.capacity_factor if layer.training else cfg.eval_capacity_factor
    cap = None if cf is None else math.ceil(round(cf * K * math.ceil(S / E), 9))
    if cf is not None and K == 1:
        cap = max(1, int(cf * math.ceil(S / E)))
    bias = layer.score_bias if layer.score_bias is not None else torch.zeros(E)
    choices, scores = [], []
    for s in range(S):
        logits = [float(layer.gate.weight[e] @ x_SD[s]) for e in range(E)]
        if cfg.router_score == "softmax":
            z = sum(math.exp(v) for v in logits)
            score = [math.exp(v) / z for v in logits]
        else:
            score = [1 / (1 + math.exp(-v)) for v in logits]
        key = [score[e] + float(bias[e]) for e in range(E)]
        if cfg.router_score == "softmax" and layer.score_bias is None:
            key = logits  # same order as the probabilities here (no underflow)
        order = sorted(range(E), key=lambda e: (-key[e], e))[:K]
        choices.append(order)
        scores.append(score)
    used = [0] * E
    kept = [[False] * K for _ in range(S)]
    for r in range(K):
        for s in range(S):
            e = choices[s][r]
            kept[s][r] = cap is None or used[e] < cap
            used[e] += 1
    out = torch.zeros_like(x_SD)
    for s in range(S):
        w = [scores[s][choices[s][r]] if kept[s][r] else 0.0 for r in range(K)]
        if cfg.normalizes_topk:
            total = sum(w)
            w = [v / total if total > 0 else 0.0 for v in w]
        for r in range(K):
            if kept[s][r]:
                out[s] += cfg.route_scale * w[r] * _expert(layer, choices[s][r], x_SD[s])
        if layer.shared is not None:
            out[s] += _shared(layer, x_SD[s])
    return out


DESIGNS = {
    "fine-grained top-3": dict(d_expert=8, top_k=3),
    "fine-grained top-1 capacity": dict(d_expert=8, top_k=1, capacity_factor=1.0),
    "fine-grained top-4 capacity": dict(d_expert=12, top_k=4, capacity_factor=0.5),
    "shared": dict(d_expert=8, n_shared_experts=2, top_k=3),
    "shared gated": dict(d_expert=8, n_shared_experts=1, shared_expert_gate=True),
    "sigmoid": dict(router_score="sigmoid", top_k=3),
    "sigmoid unnormalised scaled": dict(router_score="sigmoid", norm_topk=False, route_scale=2.5),
    "sigmoid capacity shared": dict(
        router_score="sigmoid", capacity_factor=1.0, n_shared_experts=1, d_expert=8
    ),
    "softmax unnormalised": dict(norm_topk=False, top_k=3),
    "softmax top-1 normalised": dict(norm_topk=True, top_k=1, route_scale=0.5),
}


@pytest.mark.parametrize("arch", ["paper", "modern"])
@pytest.mark.parametrize("design", list(DESIGNS))
def test_layer_equals_the_token_loop(design, arch):
    cfg = _cfg(arch=arch, **DESIGNS[design])
    layer = _layer(cfg).train()
    x_BTD = torch.randn(2, 9, cfg.d_model, generator=torch.Generator().manual_seed(1))
    got = layer(x_BTD).y_BTD.reshape(18, -1)
    with torch.no_grad():
        want = reference(layer, cfg, x_BTD.reshape(18, -1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert layer.experts.w1.shape == (6, 16, cfg.expert_width)


def test_gradients_reach_router_shared_experts_and_gate():
    cfg = _cfg(router_score="sigmoid", n_shared_experts=1, shared_expert_gate=True, d_expert=8)
    layer = _layer(cfg).train()
    layer(torch.randn(2, 5, 16)).y_BTD.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_expert_top1_equals_the_dense_model():
    """An MoE with one expert, top-1, no balancing loss and the dense FFN's width computes the
    dense model: the router's softmax over one expert is exactly 1.0, the combine multiplies by
    it and adds into zeros, so the logits are bitwise the dense model's."""
    for arch in ("paper", "modern"):
        dense_cfg = _cfg(arch=arch, n_experts=0)
        moe_cfg = dataclasses.replace(dense_cfg, n_experts=1, top_k=1, balance="none").validate()
        dense, moe = build_model(dense_cfg, seed=0), build_model(moe_cfg, seed=1)
        state = dense.state_dict()
        names = ("fc1", "fc2") if arch == "paper" else ("w1", "w3", "w2")
        for i in range(dense_cfg.n_layers):
            for n in names:
                w = state.pop(f"layers.{i}.ffn.{n}.weight")
                b = state.pop(f"layers.{i}.ffn.{n}.bias", None)
                short = {"fc1": "w1", "fc2": "w2"}.get(n, n)
                state[f"layers.{i}.ffn.experts.{short}"] = w.t()[None].contiguous()
                if b is not None:
                    state[f"layers.{i}.ffn.experts.{'b1' if n == 'fc1' else 'b2'}"] = b[None]
            state[f"layers.{i}.ffn.gate.weight"] = moe.state_dict()[f"layers.{i}.ffn.gate.weight"]
        moe.load_state_dict(state)
        tokens = torch.randint(0, 61, (3, 11), generator=torch.Generator().manual_seed(0))
        for mode in ("train", "eval"):
            getattr(dense, mode)(), getattr(moe, mode)()
            a, b = dense(tokens), moe(tokens)
            assert torch.equal(a.logits_BTV, b.logits_BTV), (arch, mode)
            assert float(b.aux_loss) == 0.0


def test_sigmoid_scores_that_all_underflow_give_finite_losses():
    routing = route(torch.full((4, 8), -120.0), 2, None, score="sigmoid")
    assert torch.isfinite(routing.aux_loss) and torch.isfinite(routing.probs_SE).all()
