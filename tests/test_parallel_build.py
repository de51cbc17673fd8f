"""Per-rank construction on 2 gloo processes: the model is built on the meta device, made
parallel, materialised with ``to_empty`` and each rank initialises only its shards; the weights
are those of the one-process build for the same seed (both init schemes, MoE at EP 2 and 1,
dense), and no rank holds the full model at any point of the setup (its peak resident memory
grows by less than the full model's parameter bytes; its parameters hold about half of them).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from _parallel_spawn import run_ranks
from moelab.config import ModelConfig
from moelab.model import build_model
from moelab.model.transformer import LanguageModel
from moelab.parallel.build import build_parallel_model
from moelab.parallel.launch import Topology, build_mesh

pytestmark = pytest.mark.slow

TINY = dict(vocab_size=48, n_layers=2, d_model=16, n_heads=2, d_ffn=32, max_seq_len=16)
# 4 MoE layers of 8 experts (d_model 256, d_ffn 2048): about 140 MB of fp32 parameters.
BIG = dict(
    vocab_size=512, n_layers=4, d_model=256, n_heads=4, d_ffn=2048, max_seq_len=16, n_experts=8
)


def _cases():
    return [
        (ModelConfig(arch="paper", n_experts=4, moe_every=1, **TINY), 2),  # fairseq init
        (ModelConfig(arch="modern", n_experts=4, moe_every=1, **TINY), 2),  # scaled normal
        (ModelConfig(arch="paper", n_experts=4, moe_every=2, **TINY), 1),  # experts replicated
        (ModelConfig(arch="paper", n_experts=0, **TINY), 1),  # dense: FSDP over both ranks
    ]


def _kib(key: str) -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields[key].split()[0])


def _worker(rank: int, world: int) -> None:
    topos = {}
    for ep in (1, 2):
        topos[ep] = Topology(rank, world, rank, ep, torch.device("cpu"))
        topos[ep].mesh = build_mesh(topos[ep])
    for cfg, ep in _cases():
        where = f"{cfg.arch} n_experts={cfg.n_experts} ep={ep}"
        model = build_parallel_model(cfg, 7, topos[ep])
        ref = build_model(cfg, seed=7)
        names = [n for n, _ in ref.named_parameters()]
        assert sorted(n for n, _ in model.named_parameters()) == sorted(names), where
        for name, p in model.named_parameters():
            full = p.full_tensor() if isinstance(p, DTensor) else p
            assert torch.equal(full, ref.get_parameter(name)), (where, name)
        for name, b in ref.named_buffers():
            assert torch.equal(model.get_buffer(name), b), (where, name)

    # No rank allocates the full model during setup (shards and a bounded scratch only).
    cfg = ModelConfig(arch="paper", moe_every=1, **BIG)
    with torch.device("meta"):
        full_bytes = sum(p.numel() * 4 for p in LanguageModel(cfg).parameters())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets this process's peak resident memory to the current one
    before = _kib("VmRSS")
    model = build_parallel_model(cfg, 7, topos[2])
    grown = (_kib("VmHWM") - before) * 1024
    local = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * 4 for p in model.parameters()
    )
    assert local < 0.55 * full_bytes, (local, full_bytes)
    assert grown < 0.8 * full_bytes, (rank, grown, full_bytes)


def test_two_ranks_build_the_one_process_weights_holding_only_their_shards():
    run_ranks(_worker, 2, timeout_s=120)
