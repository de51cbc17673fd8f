"""Helpers for the evaluation tests: a real byte-level BPE tokenizer trained in a second, a tiny
moelab model (dense or MoE), log-probs by hand, and the trained run behind ``eval_run``."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moelab.config import ModelConfig
from moelab.model import build_model

CORPUS = [
    "The cat sat on the mat. The dog sat on the log. A bird sang in the tree.",
    "How do I open a jar? Twist the lid to the left. Run warm water over the lid.",
    "She poured milk in the bowl. He lost his appetite. The sun was rising.",
    "Question: is the sky blue? Answer: yes. Question: is fire cold? Answer: no.",
    "positive negative True False Neither yes no Answer: Sentence 1: Sentence 2:",
] * 4


def tiny_tokenizer(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_model(vocab_size: int, moe: bool = False, seed: int = 0, **overrides):
    cfg = ModelConfig(
        name="tiny",
        vocab_size=vocab_size,
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_ffn=64,
        max_seq_len=128,
        dropout=0.0,
        attn_dropout=0.0,
        n_experts=4 if moe else 0,
        moe_every=2,
        top_k=2,
        **overrides,
    )
    torch.manual_seed(seed)
    model = build_model(cfg, seed=seed)
    model.eval()
    return model


def train_eval_run(root: Path, **model_overrides) -> Path:
    """A run folder ``root/run`` with a tiny MoE model trained for a few steps on small text
    written here (~5-10 s; conftest.py builds it once per session as ``eval_run``). Domains:
    ``books`` (training) and ``news`` (held out). ``model_overrides``: model config keys."""
    from _train_data import tiny_config
    from moelab.data import prepare
    from moelab.train import load_run_config, train

    rng = random.Random(0)
    words = "the cat sat on a mat dog ran to park bird sang in tree she poured milk".split()
    (root / "books").mkdir()
    for i in range(2):
        paras = [" ".join(rng.choice(words) for _ in range(30)) + "." for _ in range(40)]
        (root / "books" / f"b{i}.txt").write_text("\n\n".join(paras), encoding="utf-8")
    news = [
        f"Stocks rose {i} points as markets " + " ".join(rng.sample(words, 8)) for i in range(40)
    ]
    (root / "news.txt").write_text("\n\n".join(news), encoding="utf-8")
    prepare(
        root / "data",
        sources=[f"books={root}/books/*.txt"],
        heldout=[f"news={root}/news.txt"],
        vocab_size=300,
    )
    model = {"name": "tiny", "n_heads": 4, "dropout": 0.0, "attn_dropout": 0.0, **model_overrides}
    train_keys = dict(budget_steps=8, seq_len=64, batch_size=8, lr=3e-3, eval_tokens=0)
    train_keys.update(device="cpu", checkpoint_every=8)
    # TrainConfig's own defaults where the builder's TRAIN sets others
    train_keys.update(warmup_steps=None, eval_points=8, log_every=10)
    raw = tiny_config(root / "data", moe=True, width=32, preset=False, model=model, **train_keys)
    cfg = load_run_config(raw)
    train(cfg, root / "run", progress=False)
    return root / "run"


def hand_logprobs(model, context_ids: list[int], continuation_ids: list[int]) -> list[float]:
    """Log-probs of the continuation tokens from one unbatched forward over full logits."""
    full = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(full[:, :-1]).logits_BTV.double(), dim=-1)[0]
    n = len(continuation_ids)
    start = len(context_ids) - 1
    return [float(logp[start + j, continuation_ids[j]]) for j in range(n)]
