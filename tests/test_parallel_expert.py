"""Expert parallelism on 2 real gloo processes: the same outputs and gradients as one process.

Dropless: the expert-parallel layer on rows r::2 of a global batch equals the single-process
layer on the whole batch. Capacity mode: capacity comes from the local batch (the paper), so the
single-process reference routes each rank's rows as a separate group. Replicated experts
(ep=1 over 2 ranks): expert gradients are summed over the copies.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from _parallel_spawn import run_ranks
from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.model.moe import MoeFFN
from moelab.parallel.expert_parallel import (
    ExpertExchange,
    expert_grad_divisor,
    expert_parallel,
    is_expert_parallel,
)

pytestmark = pytest.mark.slow

TOL = dict(rtol=1e-5, atol=1e-5)


def _layer(arch: str, cf: float | None, top_k: int, seed: int) -> MoeFFN:
    cfg = ModelConfig(
        arch=arch,
        vocab_size=64,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_ffn=24,
        n_experts=4,
        top_k=top_k,
        capacity_factor=cf,
        dropout=0.0,
        attn_dropout=0.0,
    )
    torch.manual_seed(seed)
    layer = MoeFFN(cfg, layer=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    return layer.train()


def _grads(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in layer.named_parameters()}


def _check_layer(rank: int, world: int, arch: str, cf, top_k: int, seed: int) -> None:
    ref = _layer(arch, cf, top_k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x_BTD = torch.randn(4, 6, 16, generator=g)
    w_BTD = torch.randn(4, 6, 16, generator=g)  # weights of a random linear loss
    aux_w = 0.0 if cf is None else 0.3  # the balancing loss is per group in capacity mode

    # Single process: dropless on the whole batch; capacity on each rank's rows separately.
    x_ref = x_BTD.clone().requires_grad_()
    y_ref = torch.empty_like(x_BTD)
    groups = [slice(None)] if cf is None else [slice(r, None, world) for r in range(world)]
    for rows in groups:
        out = ref(x_ref[rows])
        ((out.y_BTD * w_BTD[rows]).sum() + aux_w * out.aux_loss).backward()
        y_ref[rows] = out.y_BTD.detach()
    ref_grads = _grads(ref)

    # Expert parallel: rank r has rows r::world and experts [2r, 2r + 1].
    ep_layer = expert_parallel(
        copy.deepcopy(ref), ep=world, ep_rank=rank, ep_group=dist.group.WORLD
    )
    ep_layer.zero_grad()
    mine = slice(rank, None, world)
    x_loc = x_BTD[mine].clone().requires_grad_()
    out = ep_layer(x_loc)
    ((out.y_BTD * w_BTD[mine]).sum() + aux_w * out.aux_loss).backward()

    torch.testing.assert_close(out.y_BTD, y_ref[mine], **TOL)
    torch.testing.assert_close(x_loc.grad, x_ref.grad[mine], **TOL)
    gate_grad = ep_layer.gate.weight.grad.clone()
    dist.all_reduce(gate_grad)  # the router is replicated: its gradient is the sum over ranks
    torch.testing.assert_close(gate_grad, ref_grads["gate.weight"], **TOL)
    lo, n_local = ep_layer.exchange.expert_offset, ep_layer.exchange.n_local
    for name, p in ep_layer.experts.named_parameters():
        want = ref_grads[f"experts.{name}"][lo : lo + n_local]
        torch.testing.assert_close(p.grad, want, **TOL)
    assert out.stats.tokens_routed_E.sum() == x_loc.shape[0] * x_loc.shape[1] * top_k


def _check_replicated(rank: int, world: int) -> None:
    """ep=1: every rank holds all experts; gradients are summed over the copies and divided."""
    ref = _layer("paper", None, 2, seed=7)
    g = torch.Generator().manual_seed(8)
    x_BTD = torch.randn(4, 6, 16, generator=g)
    out = ref(x_BTD)
    (out.y_BTD.square().sum() / world).backward()
    layer = expert_parallel(
        copy.deepcopy(ref),
        ep=1,
        ep_rank=0,
        edp_group=dist.group.WORLD,
        grad_divisor=expert_grad_divisor("exact", world),
    )
    layer.zero_grad()
    x_loc = x_BTD[rank::world]
    layer(x_loc).y_BTD.square().sum().backward()
    for name, p in layer.experts.named_parameters():
        torch.testing.assert_close(p.grad, ref.experts.get_parameter(name).grad, **TOL)


def _check_paper_normalisation(rank: int, world: int) -> None:
    """grad_divisor=sqrt(world) (fairseq's sqrt_world_size): expert gradients are the summed
    ones over sqrt(world), the router's are untouched."""
    ref = _layer("paper", None, 2, seed=9)
    x_BTD = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(10))
    ref(x_BTD).y_BTD.sum().backward()
    layer = expert_parallel(
        copy.deepcopy(ref),
        ep=world,
        ep_rank=rank,
        ep_group=dist.group.WORLD,
        grad_divisor=expert_grad_divisor("paper", world),
    )
    layer.zero_grad()
    layer(x_BTD[rank::world]).y_BTD.sum().backward()
    lo, n_local = layer.exchange.expert_offset, layer.exchange.n_local
    for name, p in layer.experts.named_parameters():
        want = ref.experts.get_parameter(name).grad[lo : lo + n_local] / world**0.5
        torch.testing.assert_close(p.grad, want, **TOL)


def _check_width_disagreement(rank: int, world: int) -> None:
    """Ranks built with different widths fail with a clear error before the token exchange,
    on every rank, instead of a backend error or a hang."""
    for cf in (None, 1.0):
        layer = expert_parallel(
            _layer("paper", cf, 2, seed=11) if rank == 0 else _wide_layer(cf),
            ep=world,
            ep_rank=rank,
            ep_group=dist.group.WORLD,
        )
        d = layer.gate.weight.shape[1]
        with pytest.raises(MoelabError, match="disagree on the model width"):
            layer(torch.randn(2, 3, d))


def _wide_layer(cf) -> MoeFFN:
    cfg = ModelConfig(d_model=24, n_heads=2, d_ffn=24, n_experts=4, capacity_factor=cf)
    return MoeFFN(cfg, layer=1).train()


def _worker(rank: int, world: int) -> None:
    _check_layer(rank, world, "paper", None, 2, seed=1)  # dropless, uneven splits
    _check_layer(rank, world, "modern", None, 1, seed=2)
    _check_layer(rank, world, "paper", 1.0, 2, seed=3)  # capacity: fixed buffers, drops
    _check_layer(rank, world, "modern", 0.5, 2, seed=4)
    _check_replicated(rank, world)
    _check_paper_normalisation(rank, world)
    _check_width_disagreement(rank, world)


def test_expert_parallel_matches_single_process():
    run_ranks(_worker, 2)


def test_grad_divisor_options():
    assert expert_grad_divisor("exact", 8) == 8.0
    assert expert_grad_divisor("paper", 16) == 4.0
    with pytest.raises(MoelabError, match="exact, paper"):
        expert_grad_divisor("sqrt", 4)


def test_expert_parallel_is_the_same_layer_with_an_exchange():
    """Expert parallelism changes only how tokens reach the experts: the layer stays the
    MoeFFN it was (same object and class, so the same route / plan_dispatch / combine and
    forward), with this rank's slice of the experts and an ExpertExchange; parameter names do
    not change. With ep=1 and no copies to sum over, it computes exactly what it did."""
    from moelab.model.moe import MoeFFN as Layer

    ref = _layer("paper", 1.0, 2, seed=12)
    full = {n: p.detach().clone() for n, p in ref.named_parameters()}
    layer = copy.deepcopy(ref)
    assert expert_parallel(layer, ep=2, ep_rank=1) is layer and type(layer) is Layer
    assert isinstance(layer.exchange, ExpertExchange) and is_expert_parallel(layer)
    assert not is_expert_parallel(ref)
    assert [n for n, _ in layer.named_parameters()] == list(full)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    assert torch.equal(layer.gate.weight, full["gate.weight"])
    for name, p in layer.experts.named_parameters():
        assert torch.equal(p, full[f"experts.{name}"][2:4])
    assert (layer.exchange.layer, layer.exchange.expert_offset, layer.exchange.n_local) == (1, 2, 2)

    one = expert_parallel(copy.deepcopy(ref), ep=1, ep_rank=0)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(13))
    for m in (ref, one):
        m.zero_grad()
        m(x).y_BTD.square().sum().backward()
    torch.testing.assert_close(one(x).y_BTD, ref(x).y_BTD, rtol=0, atol=0)
    for name, p in one.named_parameters():
        torch.testing.assert_close(p.grad, ref.get_parameter(name).grad, rtol=0, atol=0)
    with pytest.raises(MoelabError, match="does not divide"):
        expert_parallel(copy.deepcopy(ref), ep=3, ep_rank=0)
