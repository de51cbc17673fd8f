"""MoE balancing that spans a training step, through the trainer's step (train/step.py):
``balance_scope: global_batch`` counts the step's routing before its micro-batches, so gradient
accumulation gives the loss of the whole batch; ``balance: bias`` moves the selection bias after
each update (also with activation checkpointing, which runs the routing twice)."""

from __future__ import annotations

import pytest
import torch

from _train_data import tiny_config
from moelab.train import load_model, load_run_config, read_metrics, train


def _run(data, out, *, grad_accum=1, parallel=None, **model):
    raw = tiny_config(
        data, moe=True, budget_steps=3, batch_size=4, seq_len=16, grad_accum=grad_accum
    )
    raw["train"].update(eval_points=1, eval_tokens=64, checkpoint_every=3)
    raw["model"].update(dropout=0.0, attn_dropout=0.0, capacity_factor=None, **model)
    if parallel:
        raw["parallel"] = parallel
    train(load_run_config(raw), out, progress=False)
    return read_metrics(out)


def test_global_batch_scope_makes_accumulation_the_whole_batch(grammar_data, tmp_path):
    whole = _run(grammar_data, tmp_path / "one", balance_scope="global_batch")
    split = _run(grammar_data, tmp_path / "two", grad_accum=2, balance_scope="global_batch")
    for a, b in zip(whole, split):
        assert a["aux_loss"] == pytest.approx(b["aux_loss"], rel=1e-5), a["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    # Per micro-batch (the default scope) the two differ: the test can tell.
    micro = _run(grammar_data, tmp_path / "micro", grad_accum=2)
    assert micro[0]["aux_loss"] != pytest.approx(whole[0]["aux_loss"], rel=1e-5)


def test_bias_balancing_moves_the_bias_and_checkpointing_changes_nothing(grammar_data, tmp_path):
    plain = _run(grammar_data, tmp_path / "plain", balance="bias", aux_loss_weight=0.0)
    ckpt = _run(
        grammar_data,
        tmp_path / "ckpt",
        parallel={"activation_checkpointing": True},
        balance="bias",
        aux_loss_weight=0.0,
    )
    assert [(r["loss"], r["grad_norm"]) for r in plain] == [
        (r["loss"], r["grad_norm"]) for r in ckpt
    ]
    biases = []
    for run in ("plain", "ckpt"):
        model = load_model(tmp_path / run)[0]
        biases.append({n: b for n, b in model.state_dict().items() if n.endswith("score_bias")})
    assert biases[0] and all(b.abs().sum() > 0 for b in biases[0].values())  # it moved
    for name, b in biases[0].items():
        assert torch.equal(b, biases[1][name]), name
