"""The built-in default study: ``moelab study --out DIR`` with no config file.

The CPU ladder's two smallest dense/MoE pairs in the modern architecture (RMSNorm, SwiGLU,
rotary positions; each MoE is its dense partner with 8 experts, top-2, in every layer) on the
built-in corpus (Python standard library: code and prose to train on, two held-out packages'
code and prose as out-of-domain sets), every run trained on the same number of tokens as in the
paper. Validation at 16 log-spaced steps gives each family's fit many points. Sized for about
1e14 training FLOPs, roughly 15 minutes on two idle CPU cores.

Why not the paper's architecture: at this scale the paper-architecture CPU presets start above
the uniform loss (about 10.5 nats for a 2048 vocabulary) and sit on the unigram plateau (about
6.5 nats) for most of such a short budget, so the larger model ends worse than the smaller one
and the frontier has too few points; the modern presets start at ln(V) and leave the plateau
within ~30 steps. ``--set`` the grid to the paper presets to study them anyway.
``configs/study/default.yaml`` is the same study as a file to copy and edit.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_STUDY: dict[str, Any] = {
    "name": "default",
    # Tiny matrices: a second OpenMP thread costs more than it gives, and far more when anything
    # else shares the CPU (measured: up to 20x slower with 2 threads on a busy 2-core machine).
    "threads": 1,
    "data": {"vocab_size": 2048},
    "base": {
        "train": {
            "budget_tokens": 1_200_000,
            "seq_len": 128,
            "batch_size": 16,  # ~590 steps per run: tiny models need steps more than batch
            "lr": 3.0e-3,
            "warmup_steps": 20,
            "schedule": "linear",
            "dtype": "fp32",
            "seed": 1,
            "eval_tokens": 8192,
            "eval_points": 16,
            "checkpoint_every": 100,
            "log_every": 20,
        }
    },
    "grid": {
        "model": [
            "dense-cpu-0.5m-modern",
            "moe-cpu-0.5m-modern",
            "dense-cpu-2m-modern",
            "moe-cpu-2m-modern",
        ]
    },
    "eval": {"ppl": False},
    "fit": {"frontier": "envelope", "bootstrap": 100},
}


def default_study_dict() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_STUDY)
