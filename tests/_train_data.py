"""Tiny prepared data for the trainer's tests, made with the real pipeline (moelab.data.prepare).

The text is sentences from a small grammar: the subject is one of 12 animals, and the animal
fixes the verb and the adverb, so a model that learns the structure predicts most tokens almost
surely, far below the unigram entropy of the tokens.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

ANIMALS = {
    "cat": ("sleeps", "quietly"),
    "dog": ("barks", "loudly"),
    "horse": ("runs", "fast"),
    "bird": ("sings", "sweetly"),
    "fish": ("swims", "slowly"),
    "frog": ("jumps", "high"),
    "owl": ("watches", "closely"),
    "bee": ("buzzes", "busily"),
    "mouse": ("hides", "nervously"),
    "goat": ("climbs", "boldly"),
    "duck": ("paddles", "calmly"),
    "wolf": ("howls", "sadly"),
}
PLACES = ["river", "barn", "forest", "garden", "hill", "house"]


def _sentence(rng: random.Random) -> str:
    animal = rng.choice(list(ANIMALS))
    verb, adverb = ANIMALS[animal]
    return f"The {animal} {verb} {adverb} near the {rng.choice(PLACES)}."


def write_corpus(folder: Path, n_docs: int, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(_sentence(rng) for _ in range(rng.randint(8, 16)))
        (folder / f"doc{i:04d}.txt").write_text(text + "\n", encoding="utf-8")


def make_prepared(root: Path) -> Path:
    """A prepared folder with two training domains and one held-out domain."""
    from moelab.data import prepare

    write_corpus(root / "src_a", 120, seed=1)
    write_corpus(root / "src_b", 120, seed=2)
    write_corpus(root / "src_c", 30, seed=3)
    out = root / "prepared"
    prepare(
        out,
        sources=[f"alpha={root / 'src_a'}/*.txt", f"beta={root / 'src_b'}/*.txt"],
        heldout=[f"gamma={root / 'src_c'}/*.txt"],
        vocab_size=320,
        val_fraction=0.1,
    )
    return out


def unigram_entropy(prepared: Path) -> float:
    """Entropy (nats) of the token distribution of the training splits."""
    from moelab.data import PreparedData

    data = PreparedData.open(prepared)
    counts = np.zeros(data.vocab_size, dtype=np.float64)
    for dom in data.train_domains:
        counts += np.bincount(np.asarray(data.tokens(dom, "train")), minlength=data.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# The trainer tests' train keys; the other builders (tests/_robust.py, tests/_eval_models.py)
# pass their own over them.
TRAIN = {
    "budget_steps": 60,
    "seq_len": 32,
    "batch_size": 16,
    "lr": 1e-2,
    "warmup_steps": 5,
    "eval_tokens": 1024,
    "eval_points": 3,
    "log_every": 1,
    "checkpoint_every": 20,
}


def tiny_config(
    prepared: Path,
    *,
    moe: bool = False,
    width: int = 64,
    context: int = 64,
    preset: bool = True,
    model: dict | None = None,
    **train,
) -> dict:
    """The one builder of the tests' tiny run configs: a 2-layer model ``width`` wide (FFN
    twice that) over ``context`` tokens, the rest from the cpu-0.5m presets (``preset=False``:
    ModelConfig's defaults), with 4 experts in every second layer when ``moe``; ``model``: more
    model keys; ``train``: train keys over :data:`TRAIN`."""
    spec = dict(n_layers=2, d_model=width, n_heads=2, d_ffn=2 * width, max_seq_len=context)
    if preset:
        spec["preset"] = "moe-cpu-0.5m" if moe else "dense-cpu-0.5m"
    if moe:
        spec.update(n_experts=4, moe_every=2)
    return {"model": {**spec, **(model or {})}, "data": str(prepared), "train": {**TRAIN, **train}}


__all__ = ["make_prepared", "math", "tiny_config", "unigram_entropy", "write_corpus"]
