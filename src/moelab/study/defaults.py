"""The built-in default study: ``moelab study --out DIR`` with no config file.

The CPU ladder's two smallest dense/MoE pairs (the MoE is its partner with 8 experts, top-2,
every second layer) on the built-in corpus (Python standard library: code and prose to train on,
two held-out packages' code and prose as out-of-domain sets), every run trained on the same
number of tokens as in the paper. Validation at log-spaced steps gives each family's fit many
points. Sized for about 1e14 training FLOPs, roughly 15 minutes on two CPU cores.
``configs/study/default.yaml`` is the same study as a file to copy and edit.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_STUDY: dict[str, Any] = {
    "name": "default",
    "data": {"vocab_size": 2048},
    "base": {
        "train": {
            "budget_tokens": 1_600_000,
            "seq_len": 128,
            "batch_size": 32,
            "lr": 3.0e-3,
            "warmup_steps": 20,
            "schedule": "linear",
            "dtype": "fp32",
            "seed": 1,
            "eval_tokens": 16384,
            "eval_points": 10,
            "checkpoint_every": 100,
            "log_every": 20,
        }
    },
    "grid": {"model": ["dense-cpu-0.5m", "moe-cpu-0.5m", "dense-cpu-2m", "moe-cpu-2m"]},
    "eval": {"ppl": False},
    "fit": {"frontier": "envelope", "bootstrap": 100},
}


def default_study_dict() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_STUDY)
