"""Shared helpers for the evaluation tests (no tests here): a real byte-level BPE tokenizer
trained in a second, and a tiny moelab model, dense or MoE."""

from __future__ import annotations

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
