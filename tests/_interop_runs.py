"""Run folders for the interop tests.

``fresh_run`` writes a run folder the way the trainer does (resolved ``config.yaml``, the data's
``tokenizer.json``, a checkpoint through ``moelab.train.checkpoint.save_checkpoint``) around a
freshly initialised model whose weights are perturbed so that norms and biases are not
trivially 1 and 0. ``trained_run`` runs the real trainer for a few steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from moelab.config import ModelConfig
from moelab.model import build_model
from moelab.train import checkpoint as ckpt_io
from moelab.train.config import DataSection, RunConfig, TrainConfig

TINY = dict(n_layers=2, d_model=32, n_heads=2, d_ffn=64, max_seq_len=64)


def fresh_run(root: Path, name: str, prepared: Path, vocab_size: int, **model) -> Path:
    kw = {**TINY, "dropout": 0.0, "attn_dropout": 0.0, **model}
    cfg = ModelConfig(name=name, vocab_size=vocab_size, **kw).validate()
    net = build_model(cfg, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    run = root / name
    run.mkdir(parents=True)
    train = TrainConfig(budget_steps=1, seq_len=32)
    run_cfg = RunConfig(cfg, DataSection(dir=str(prepared)), train)
    (run / "config.yaml").write_text(run_cfg.to_yaml())
    shutil.copy(prepared / "tokenizer.json", run / "tokenizer.json")
    ckpt_io.save_checkpoint(run, 1, net, {"step": 1}, {"step": 1, "tokens": 0}, keep_last=1)
    return run


def trained_run(root: Path, prepared: Path, *, moe: bool, steps: int = 3) -> Path:
    from _train_data import tiny_config
    from moelab.train import load_run_config, train

    raw = tiny_config(prepared, moe=moe, budget_steps=steps, checkpoint_every=0, eval_tokens=0)
    raw["model"].update(dropout=0.0, attn_dropout=0.0)
    run = root / ("moe" if moe else "dense")
    train(load_run_config(raw), run)
    return run
