"""Balancing designs (issue 17 item 4) and telemetry on request (issue 18).

- sequence scope: the paper's loss per sequence, averaged, against a loop over sequences;
- global-batch scope: the mean of the micro-batches' losses equals the loss of the concatenated
  batch (value and gradient), under accumulation and on 2 gloo ranks;
- auxiliary-loss-free balancing: the bias moves toward balance on a skewed stream, never
  changes the combine weights, is saved in the state dict, and is the same on every rank
  (experts expert-parallel);
- MaxVio and dead experts; MoE telemetry only when the caller asks.
"""

from __future__ import annotations

import dataclasses

import torch

from _designs import design_cfg
from _parallel_spawn import run_ranks
from moelab.model import KVCache, build_model
from moelab.model.balance import global_batch_counts, update_balance_bias
from moelab.model.moe import MoeFFN, load_balance, route
from moelab.parallel.build import build_parallel_model
from moelab.parallel.checkpointing import checkpoint_blocks
from moelab.parallel.expert_parallel import expert_parallel
from moelab.parallel.launch import Topology, build_mesh
from moelab.train.step import train_step


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 61, (n, 8), generator=torch.Generator().manual_seed(seed))


def test_sequence_scope_is_the_loss_per_sequence_averaged():
    logits_SE = torch.randn(3 * 5, 4, generator=torch.Generator().manual_seed(0))
    logits_SE.requires_grad_(True)
    got = route(logits_SE, 2, None, seq_len=5).aux_loss
    want = 0.0
    for b in range(3):
        rows = logits_SE[5 * b : 5 * b + 5]
        p = torch.softmax(rows, -1)
        top1 = [int(p[t].argmax()) for t in range(5)]
        ce = torch.tensor([top1.count(e) / 5 for e in range(4)])
        want = want + 4 * (p.mean(0) * ce).sum() / 3
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, logits_SE, retain_graph=True)[0]
    g2 = torch.autograd.grad(want, logits_SE)[0]
    torch.testing.assert_close(g1, g2)
    whole = route(logits_SE, 2, None).aux_loss
    assert not torch.allclose(got, whole)  # the scope changes the loss here


def _aux_and_grads(model, micro_batches, scale: float):
    total = 0.0
    for tokens in micro_batches:
        out = model(tokens, return_logits=False)
        (out.aux_loss * scale).backward()
        total += float(out.aux_loss.detach()) * scale
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_global_batch_under_accumulation_equals_the_concatenated_batch():
    tokens = _tokens(4)
    whole = build_model(design_cfg(), seed=3).train()
    want, want_g = _aux_and_grads(whole, [tokens], 1.0)
    model = build_model(design_cfg(balance_scope="global_batch"), seed=3).train()
    micros = list(tokens.split(1))
    global_batch_counts(model, micros)
    got, got_g = _aux_and_grads(model, micros, 1 / len(micros))
    assert abs(got - want) < 1e-6
    assert want_g.keys() == got_g.keys() and len(want_g) > 0
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-5, atol=1e-7)
    # The micro-batch scope gives another loss on the same micro-batches.
    local = build_model(design_cfg(), seed=3).train()
    other, _ = _aux_and_grads(local, micros, 1 / len(micros))
    assert abs(other - want) > 1e-4


def _ranks_body(rank: int, world: int) -> None:
    tokens = _tokens(4)
    whole = build_model(design_cfg(), seed=3).train()
    want, want_g = _aux_and_grads(whole, [tokens], 1.0)
    mine = tokens.split(2)[rank]
    for accumulate in (False, True):
        model = build_model(design_cfg(balance_scope="global_batch"), seed=3).train()
        micros = list(mine.split(1)) if accumulate else [mine]
        if accumulate:
            global_batch_counts(model, micros)
        got, got_g = _aux_and_grads(model, micros, 1 / len(micros))
        # Data parallelism averages gradients (and the logged loss) over the ranks.
        both = torch.tensor([got])
        torch.distributed.all_reduce(both)
        assert abs(float(both) / world - want) < 1e-6, (accumulate, float(both) / world, want)
        for name, g in got_g.items():
            torch.distributed.all_reduce(g)
            torch.testing.assert_close(g / world, want_g[name], rtol=1e-5, atol=1e-7)
    # Under FSDP (the router weight a DTensor) the counts work the same way.
    topo = Topology(rank, world, rank, 2, torch.device("cpu"))
    topo.mesh = build_mesh(topo)
    sharded = build_parallel_model(design_cfg(balance_scope="global_batch"), 3, topo).train()
    micros = list(mine.split(1))
    global_batch_counts(sharded, micros)
    got, _ = _aux_and_grads(sharded, micros, 1 / len(micros))
    both = torch.tensor([got])
    torch.distributed.all_reduce(both)
    assert abs(float(both) / world - want) < 1e-6, ("fsdp", float(both) / world, want)

    # Bias balancing: each rank routes its own tokens, its experts expert-parallel (half the
    # experts each, tokens sent by all-to-all); the update is the concatenated batch's.
    cfg = design_cfg(balance="bias", bias_update_rate=0.01)
    ref = build_model(cfg, seed=3).train()
    ref(tokens, return_logits=False)
    model = build_model(cfg, seed=3).train()
    for block in model.layers:
        expert_parallel(block.ffn, ep=2, ep_rank=rank)
    model(mine, return_logits=False)
    torch.distributed.barrier()
    update_balance_bias(model)
    # The reference is not distributed: sum its loads the same way by hand.
    for layer_ref, layer in zip(ref.layers, model.layers, strict=True):
        load = layer_ref.ffn.load_E.float()
        want_bias = 0.01 * torch.sign(load.mean() - load)
        assert torch.equal(layer.ffn.score_bias, want_bias), (rank, layer.ffn.score_bias)


def test_global_batch_and_bias_on_two_gloo_ranks():
    run_ranks(_ranks_body, 2, timeout_s=60.0)


def test_a_step_forgets_its_global_counts():
    # A later step of one micro-batch must use its own counts, not the previous step's.
    def step(model, batch, micro_batch):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        params = list(model.parameters())
        return train_step(model, batch, opt, params, micro_batch=micro_batch, aux_loss_weight=1.0)

    batch = torch.randint(0, 61, (4, 9), generator=torch.Generator().manual_seed(1))
    model = build_model(design_cfg(balance_scope="global_batch"), seed=3).train()
    step(model, batch, 2)
    assert all(block.ffn.balance_counts_E is None for block in model.layers)
    fresh = build_model(design_cfg(balance_scope="global_batch"), seed=3).train()
    assert torch.equal(step(model, batch[:2], 2).aux_loss, step(fresh, batch[:2], 2).aux_loss)


def test_checkpointing_counts_the_bias_loads_once():
    model = checkpoint_blocks(build_model(design_cfg(balance="bias"), seed=3).train())
    tokens = _tokens(2)
    model(tokens).logits_BTV.sum().backward()  # recomputes every block
    for block in model.layers:
        assert int(block.ffn.load_E.sum()) == tokens.numel() * 2  # tokens x top_k


def test_bias_balancing_moves_toward_balance_and_never_changes_weights():
    cfg = design_cfg(balance="bias", bias_update_rate=0.02, top_k=1, n_experts=4)
    model = build_model(cfg, seed=0).train()
    layer: MoeFFN = model.layers[0].ffn
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(16, generator=gen)
    with torch.no_grad():
        layer.gate.weight[0] = u / u.norm()  # a skewed stream: every token prefers expert 0
    stream = [torch.randn(4, 8, 16, generator=gen) + u for _ in range(60)]
    held_out = torch.randn(16, 32, 16, generator=gen) + u

    def max_vio() -> float:  # over 512 held-out tokens (a 32-token batch is too noisy)
        layer.load_E.zero_()
        with torch.no_grad():
            layer(held_out)
        vio = float(load_balance(layer.load_E)[0])
        layer.load_E.zero_()
        return vio

    before = max_vio()
    assert before > 2.5  # nearly every token on one expert of four (at most 3)
    for x in stream:
        with torch.no_grad():
            layer(x, stats=False)
        update_balance_bias(model)
    assert max_vio() < 1.2  # measured 0.95
    bias = layer.score_bias.clone()
    with torch.no_grad():
        layer(stream[0], stats=False)
    update_balance_bias(model, step_taken=False)  # a skipped step: counts cleared, no move
    assert torch.equal(layer.score_bias, bias) and int(layer.load_E.sum()) == 0
    assert layer.score_bias[0] < 0 < layer.score_bias[1:].max()
    assert "layers.0.ffn.score_bias" in model.state_dict()
    assert "layers.0.ffn.load_E" not in model.state_dict()

    # The weights are the unbiased scores of the chosen experts, whatever the bias chose.
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
    for score in ("softmax", "sigmoid"):
        plain = route(logits, 2, None, score=score)
        biased = route(logits, 2, None, score=score, bias_E=torch.tensor([-9.0, 0.0, 0.0, 9.0]))
        assert not torch.equal(plain.expert_SK, biased.expert_SK)
        assert (biased.expert_SK == 3).any(dim=1).all()
        s = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
        g = s.gather(1, biased.expert_SK)
        torch.testing.assert_close(biased.combine_SK, g / g.sum(1, keepdim=True))


def test_max_vio_dead_experts_and_telemetry_only_when_asked():
    vio, dead = load_balance(torch.tensor([6, 2, 0, 0]))
    assert float(vio) == 6 / 2 - 1 and int(dead) == 2
    assert float(load_balance(torch.zeros(3, dtype=torch.int64))[0]) == 0.0
    model = build_model(design_cfg(n_layers=1), seed=0)
    tokens = _tokens(2)
    stats = model.train()(tokens).moe_stats  # training: the trainer's telemetry
    assert len(stats) == 1
    vio, dead = load_balance(stats[0].tokens_routed_E)
    assert torch.equal(stats[0].max_vio, vio) and torch.equal(stats[0].dead_experts, dead)
    model.eval()
    with torch.no_grad():
        assert model(tokens).moe_stats == []  # evaluation: only when asked
        assert len(model(tokens, moe_stats=True).moe_stats) == 1
        cache = KVCache()
        model(tokens[:, :4], kv_cache=cache)
        assert model(tokens[:, 4:5], kv_cache=cache).moe_stats == []  # decoding: none
        # Asked or not, the outputs are the same.
        a = model(tokens, moe_stats=True).logits_BTV
        assert torch.equal(a, model(tokens).logits_BTV)
    assert model.train()(tokens, moe_stats=False).moe_stats == []


def test_no_balancing_loss_still_reports_it():
    model = build_model(design_cfg(balance="none"), seed=0).train()
    out = model(_tokens(2))
    assert float(out.aux_loss) == 0.0
    assert all(float(s.aux_loss) > 0 for s in out.moe_stats)
    same = dataclasses.replace(design_cfg(), balance="loss")
    assert float(build_model(same, seed=0).train()(_tokens(2)).aux_loss.detach()) > 0
