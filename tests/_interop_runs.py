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

from _train_data import tiny_config
from moelab.model import build_model
from moelab.train import checkpoint as ckpt_io
from moelab.train.config import run_config_from_dict


def fresh_run(root: Path, name: str, prepared: Path, vocab_size: int, **model) -> Path:
    model = {"name": name, "vocab_size": vocab_size, "dropout": 0.0, "attn_dropout": 0.0, **model}
    raw = tiny_config(prepared, width=32, preset=False, model=model, budget_steps=1)
    run_cfg = run_config_from_dict(raw, check_data=False)
    net = build_model(run_cfg.model, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(run_cfg.to_yaml())
    shutil.copy(prepared / "tokenizer.json", run / "tokenizer.json")
    ckpt_io.save_checkpoint(run, 1, net, {"step": 1}, {"step": 1, "tokens": 0}, keep_last=1)
    return run


def trained_run(root: Path, prepared: Path, *, moe: bool, steps: int = 3) -> Path:
    from moelab.train import load_run_config, train

    raw = tiny_config(prepared, moe=moe, budget_steps=steps, checkpoint_every=0, eval_tokens=0)
    raw["model"].update(dropout=0.0, attn_dropout=0.0)
    run = root / ("moe" if moe else "dense")
    train(load_run_config(raw), run)
    return run
