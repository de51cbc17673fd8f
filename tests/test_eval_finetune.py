"""Fine-tuning: a tiny MoE learns a synthetic classification task well above chance, every
parameter (routers and experts included) trains, and the learning rate is chosen on held-out
training items."""

from __future__ import annotations

import random

import pytest
import torch

from _eval_models import tiny_model, tiny_tokenizer
from moelab.data.tokenizer import eot_token_id
from moelab.errors import MoelabError
from moelab.eval.finetune import FinetuneSettings, _train_one, finetune_task
from moelab.eval.tasks.items import Item, Task
from moelab.eval.tokens import make_encode

POSITIVE = "good great fun happy love".split()
NEGATIVE = "bad awful boring sad hate".split()
FILLER = "the cat sat on mat dog ran".split()


def _items(n: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        label = rng.randint(0, 1)
        # filler words, then the word that carries the class
        words = [rng.choice(FILLER) for _ in range(3)] + [
            rng.choice(POSITIVE if label else NEGATIVE)
        ]
        items.append(Item((" ".join(words),), ("negative", "positive"), label))
    return items


def _sentiment_task() -> Task:
    return Task(
        "synthetic-sentiment",
        "choice",
        _items(60, 1),
        "val",
        _items(60, 2),
        "train",
        finetune="classify",
        class_names=["negative", "positive"],
    )


@pytest.mark.slow
def test_tiny_moe_learns_a_synthetic_classification_task():
    tok = tiny_tokenizer()
    model = tiny_model(tok.get_vocab_size(), moe=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FinetuneSettings(epochs=2, batch_size=16, lrs=(1e-5, 1e-2), seed=0)
    result = finetune_task(model, tok, _sentiment_task(), settings)
    assert result["best_lr"] == 1e-2  # chosen on the held-out part of the train split
    assert result["n_heldout"] == 6 and result["n_train"] == 54
    assert result["accuracy"] >= 0.8 and result["chance"] == 0.5
    by_lr = {g["lr"]: g for g in result["grid"]}
    assert by_lr[1e-2]["heldout_accuracy"] >= by_lr[1e-5]["heldout_accuracy"]
    # the pretrained model itself is untouched: each rate trains a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_parameter_trains_routers_and_experts_included():
    tok = tiny_tokenizer()
    model = tiny_model(tok.get_vocab_size(), moe=True, capacity_factor=1.0)
    settings = FinetuneSettings(epochs=1, batch_size=8, lrs=(1e-3,), seed=0)
    items = _items(16, 3)
    tuned, head, loss, tokens = _train_one(
        model,
        2,
        items,
        "classify",
        1e-3,
        settings,
        make_encode(tok),
        eot_token_id(tok, default=0),
        64,
        "cpu",
        lambda n: None,
    )
    names = [n for n, _ in model.named_parameters()]
    assert any(".gate." in n for n in names) and any("experts" in n for n in names)
    unchanged = [
        n
        for (n, p0), p1 in zip(model.named_parameters(), tuned.parameters())
        if torch.equal(p0, p1)
    ]
    assert unchanged == []
    layers = [m for m in tuned.modules() if hasattr(m, "eval_capacity_factor")]
    assert layers and all(m.capacity_factor is None for m in layers)  # dropless by default
    assert tokens > 0 and loss == loss


def test_tasks_without_a_train_split_or_head_are_refused():
    tok = tiny_tokenizer()
    model = tiny_model(tok.get_vocab_size())
    no_train = Task("t", "choice", _items(4, 0), "val", finetune="classify", class_names=["n", "p"])
    with pytest.raises(MoelabError, match="no train split"):
        finetune_task(model, tok, no_train)
    last_word = Task("lw", "last_word", [Item(("a",), ("b",), 0)], "test")
    with pytest.raises(MoelabError, match="not a fine-tuning task"):
        finetune_task(model, tok, last_word)
    with pytest.raises(MoelabError, match="lrs must be positive numbers"):
        FinetuneSettings(lrs=()).validate()


def test_extra_splits_are_scored_by_the_chosen_model_and_ties_go_to_lower_loss():
    tok = tiny_tokenizer()
    model = tiny_model(tok.get_vocab_size())
    val = _items(12, 4)
    task = Task(
        "two-dev-sets",
        "choice",
        val,
        "dev_a",
        _items(20, 5),
        "train",
        finetune="classify",
        class_names=["negative", "positive"],
        extra_splits={"dev_b": list(val), "dev_c": _items(8, 6)},
    )
    settings = FinetuneSettings(epochs=1, batch_size=8, lrs=(1e-4, 3e-3), seed=0)
    result = finetune_task(model, tok, task, settings, limit=10)
    assert list(result["splits"]) == ["dev_a", "dev_b", "dev_c"]
    assert [s["n_items"] for s in result["splits"].values()] == [10, 10, 8]
    # dev_b holds the same items as dev_a: one model, so the same accuracy
    assert result["splits"]["dev_a"]["accuracy"] == result["splits"]["dev_b"]["accuracy"]
    assert result["accuracy"] == result["splits"]["dev_a"]["accuracy"]
    best = max(result["grid"], key=lambda g: (g["heldout_accuracy"], -g["heldout_loss"]))
    assert result["best_lr"] == best["lr"]
    for g in result["grid"]:
        assert set(g["split_accuracy"]) == {"dev_a", "dev_b", "dev_c"}
        assert g["heldout_loss"] > 0
