"""Activation checkpointing (``parallel.activation_checkpointing``): the same numbers, less kept.

A tiny paper-arch MoE with every dropout on and the second expert sampled (random draws in
every block) gives bitwise the same loss and bitwise the same gradient of every parameter with
and without checkpointing, and autograd keeps fewer bytes for backward (measured with
``saved_tensors_hooks`` over a real forward). One process trains with it through the Trainer to
bitwise the same losses; the 2-rank run is tests/test_parallel_train.py (it trains with the key
on against a one-process run without it).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import yaml

from _train_data import tiny_config
from moelab.errors import MoelabError
from moelab.model import build_model
from moelab.parallel.checkpointing import checkpoint_blocks
from moelab.parallel.options import ParallelConfig
from moelab.presets import get_preset
from moelab.train import load_run_config, read_metrics, train


def _model_cfg():
    return dataclasses.replace(
        get_preset("moe-cpu-0.5m"),
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_ffn=64,
        vocab_size=64,
        max_seq_len=16,
        n_experts=4,
        moe_every=1,
        dropout=0.2,
        attn_dropout=0.2,
        activation_dropout=0.2,
        second_expert_policy="sampling",
        aux_loss_weight=0.01,
        z_loss_weight=0.001,
    )


def _step(model, tokens):
    """Loss and gradients of one training step, from a fixed random state; also the bytes
    autograd saved for backward during the forward."""
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    torch.manual_seed(1234)
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(tokens[:, :-1], targets_BT=tokens[:, 1:])
        loss = out.ce_loss + 0.01 * out.aux_loss + 0.001 * out.z_loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, saved


def test_checkpointed_blocks_give_the_same_loss_and_gradients_and_keep_less():
    cfg = _model_cfg()
    assert cfg.arch == "paper" and cfg.is_moe
    plain = build_model(cfg, seed=0).train()
    ckpt = checkpoint_blocks(copy.deepcopy(plain))
    assert all("forward" in vars(b) for b in ckpt.layers)
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    tokens = torch.randint(0, cfg.vocab_size, (4, 17), generator=torch.Generator().manual_seed(0))
    loss_a, grads_a, saved_a = _step(plain, tokens)
    loss_b, grads_b, saved_b = _step(ckpt, tokens)
    assert torch.equal(loss_a, loss_b)  # bitwise
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name  # bitwise
    # Dropout really drew: another random state gives another loss.
    torch.manual_seed(99)
    other = plain(tokens[:, :-1], targets_BT=tokens[:, 1:]).ce_loss
    assert not torch.equal(other.detach(), loss_a)
    # What the blocks kept is gone (the embedding, final norm and loss still save theirs).
    assert saved_b < saved_a / 2, (saved_a, saved_b)
    # Evaluation (no grad) runs the plain forward.
    with torch.no_grad():
        ckpt.eval(), plain.eval()
        assert torch.equal(ckpt(tokens).logits_BTV, plain(tokens).logits_BTV)


def test_one_process_trains_bitwise_the_same_and_records_the_key(grammar_data, tmp_path):
    raw = tiny_config(grammar_data, moe=True, budget_steps=3, batch_size=2, seq_len=16)
    raw["train"].update(eval_points=1, eval_tokens=64, checkpoint_every=3)
    train(load_run_config(raw), tmp_path / "plain", progress=False)
    on = {**raw, "parallel": {"activation_checkpointing": True}}
    cfg = load_run_config(on)
    assert cfg.config_hash() == load_run_config(raw).config_hash()  # not in the hash
    train(cfg, tmp_path / "ckpt", progress=False)
    stored = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    assert stored["parallel"]["activation_checkpointing"] is True
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ckpt")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in a] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in b
    ]


def test_a_non_boolean_from_python_is_refused_in_one_line():
    with pytest.raises(MoelabError, match="^parallel.activation_checkpointing: must be true or"):
        ParallelConfig(activation_checkpointing="full").validate()
