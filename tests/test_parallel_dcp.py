"""Sharded checkpoints across world sizes and expert-parallel degrees (2 gloo processes).

One process saves; 2 ranks load it with 2-way and with 1-way expert parallelism and get the same
eval loss; 2 ranks train a step and save; one process loads that (directly and through the
consolidated safetensors file) and gets the same eval loss and optimizer state.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

from _parallel_spawn import run_ranks
from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.model import build_model
from moelab.parallel.dcp import consolidate, load_sharded, save_sharded
from moelab.parallel.fsdp import parallelize
from moelab.parallel.launch import Topology, build_mesh
from moelab.parallel.options import ParallelConfig
from moelab.train.config import TrainConfig
from moelab.train.optim import build_optimizer

pytestmark = pytest.mark.slow

CFG = dict(
    arch="paper",
    vocab_size=48,
    n_layers=2,
    d_model=16,
    n_heads=2,
    d_ffn=32,
    max_seq_len=16,
    n_experts=4,
    moe_every=1,
    top_k=2,
    capacity_factor=1.0,
    dropout=0.0,
    attn_dropout=0.0,
)


def _cfg() -> ModelConfig:
    return ModelConfig(**CFG)


def _tokens() -> torch.Tensor:
    return torch.randint(0, 48, (4, 9), generator=torch.Generator().manual_seed(5))


def _ce(model, rows_BT1) -> torch.Tensor:
    logits = model(rows_BT1[:, :-1]).logits_BTV
    return F.cross_entropy(logits.reshape(-1, 48), rows_BT1[:, 1:].reshape(-1))


@torch.no_grad()
def _eval_loss(model, rank: int = 0, world: int = 1) -> float:
    """Mean CE over the fixed batch; each rank scores rows r::world (dropless in eval mode)."""
    model.eval()
    loss = _ce(model, _tokens()[rank::world]).reshape(1)
    if world > 1:
        dist.all_reduce(loss)
    model.train()
    return float(loss) / world


def _train_step(model, opt, rows_BT1) -> None:
    _ce(model, rows_BT1).backward()
    opt.step()
    opt.zero_grad()


def _opt(model):
    return build_optimizer(model, TrainConfig(budget_steps=1, lr=1e-2))


def _worker(rank: int, world: int, saved_one: str, want: float, out: str) -> None:
    for ep in (2, 1):
        topo = Topology(rank, world, rank, ep, torch.device("cpu"))
        topo.mesh = build_mesh(topo)
        model = parallelize(build_model(_cfg(), seed=1), topo, ParallelConfig())  # must load
        opt = _opt(model)
        load_sharded(saved_one, model, opt)
        got = _eval_loss(model, rank, world)
        assert abs(got - want) < 1e-6, (ep, got, want)
    # ep=1 last; train a step on each rank's rows and save from both ranks.
    _train_step(model, opt, _tokens()[rank::world])
    save_sharded(Path(out) / "sharded", model, opt)
    loss = _eval_loss(model, rank, world)
    if rank == 0:
        (Path(out) / "loss.json").write_text(json.dumps(loss))


def test_checkpoints_move_between_world_sizes(tmp_path):
    model = build_model(_cfg(), seed=0)
    opt = _opt(model)
    _train_step(model, opt, _tokens())  # non-trivial weights and optimizer state
    save_sharded(tmp_path / "one", model, opt)
    want = _eval_loss(model)

    run_ranks(_worker, 2, str(tmp_path / "one"), want, str(tmp_path), timeout_s=60)
    saved_two = tmp_path / "sharded"
    want_two = json.loads((tmp_path / "loss.json").read_text())
    assert abs(want_two - want) > 1e-4  # the step changed the weights

    back = build_model(_cfg(), seed=2)
    back_opt = _opt(back)
    load_sharded(saved_two, back, back_opt)
    assert abs(_eval_loss(back) - want_two) < 1e-6
    w1 = back.get_parameter("layers.0.ffn.experts.w1")
    assert back_opt.state[w1]["exp_avg"].shape == (4, 16, 32)  # full optimizer state
    assert float(back_opt.state[w1]["step"]) == 2.0

    record = consolidate(saved_two, tmp_path / "model.safetensors")
    assert record["bytes"] == (tmp_path / "model.safetensors").stat().st_size
    plain = build_model(_cfg(), seed=3)
    plain.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    assert abs(_eval_loss(plain) - want_two) < 1e-6


def test_loading_a_mismatched_checkpoint_is_a_clear_error(tmp_path):
    save_sharded(tmp_path / "ck", build_model(_cfg(), seed=0))
    other = build_model(ModelConfig(**{**CFG, "d_model": 32}), seed=0)
    with pytest.raises(MoelabError, match="does not fit"):
        load_sharded(tmp_path / "ck", other)
    with pytest.raises(MoelabError, match="not a sharded checkpoint"):
        load_sharded(tmp_path / "missing", other)
