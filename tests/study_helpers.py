"""Small files for the study tests: a two-domain corpus plus a held-out one, a choice task with
a train split for shots, and a miniature study YAML (two sizes, dense and MoE)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = (
    "the cat sat on a mat and the dog ran far away from home while birds sang "
    "old songs in tall trees near the river under a grey sky"
).split()
CODE = "def f x return x plus one if else for i in range print import class self".split()


def _doc(rng: random.Random, vocab: list[str], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def write_corpus(root: Path) -> None:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "prose.txt").write_text("\n\n".join(_doc(rng, WORDS, 60) for _ in range(200)))
    (root / "code.txt").write_text("\n\n".join(_doc(rng, CODE, 60) for _ in range(200)))
    (root / "mixed.txt").write_text("\n\n".join(_doc(rng, WORDS + CODE, 60) for _ in range(40)))


def write_task(root: Path, name: str = "animals") -> Path:
    """A two-choice task (generic JSONL schema) and its train split for few-shot examples."""
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> str:
        out = []
        for _ in range(n):
            label = rng.randrange(2)
            choices = ["sat on a mat", "ran far away"]
            out.append(json.dumps({"context": "the cat", "choices": choices, "label": label}))
        return "\n".join(out) + "\n"

    path = root / f"{name}.jsonl"
    path.write_text(rows(12))
    (root / f"{name}.train.jsonl").write_text(rows(12))
    return path


def tiny_model(name: str, d_model: int, moe: bool) -> dict:
    m = {
        "preset": "moe-cpu-0.5m" if moe else "dense-cpu-0.5m",
        "name": name,
        "n_layers": 2,
        "d_model": d_model,
        "n_heads": 2,
        "d_ffn": 2 * d_model,
        "max_seq_len": 64,
    }
    if moe:
        m["n_experts"] = 4
    return m


def mini_study(tmp: Path, *, with_tasks: bool = True, budget_tokens: int = 16384) -> Path:
    """Write corpus, task and study YAML under ``tmp``; return the YAML path."""
    data = tmp / "text"
    write_corpus(data)
    study: dict = {
        "name": "mini",
        "threads": 1,
        "measure_throughput": False,
        "data": {
            "root": str(data),
            "sources": {"prose": "prose.txt:docs=blank", "code": "code.txt:docs=blank"},
            "heldout": {"mixed": "mixed.txt:docs=blank"},
            "vocab_size": 300,
        },
        "base": {
            "train": {
                "budget_tokens": budget_tokens,
                "seq_len": 32,
                "batch_size": 8,
                "lr": 3.0e-3,
                "warmup_steps": 4,
                "eval_tokens": 1024,
                "eval_points": 6,
                "checkpoint_every": 8,
                "log_every": 8,
            }
        },
        "grid": {
            "model": [
                tiny_model("tiny-dense-a", 32, False),
                tiny_model("tiny-moe-a", 32, True),
                tiny_model("tiny-dense-b", 64, False),
                tiny_model("tiny-moe-b", 64, True),
            ]
        },
        "eval": {"ppl": True, "ppl_max_tokens": 512},
        "fit": {"bootstrap": 10},
    }
    if with_tasks:
        task = write_task(tmp / "tasks")
        study["eval"].update(
            zero_shot=[str(task)],
            few_shot=[str(task)],
            shots=1,
            seeds=2,
            limit=8,
            finetune=[str(task)],
            finetune_options={"epochs": 1, "lrs": [1.0e-3], "batch_size": 4},
        )
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
