"""Results tables built in code, with the columns of docs/study.md and team CONTRACT section 2,
for the analysis and report tests: WSD runs with annealed cooldown-branch points, replicate
seeds, per-domain and zero-shot columns. Losses follow known laws so tests know the answer."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from moelab.study.results.table import CurvePoint, from_row

E_DENSE, ALPHA_DENSE = 3.0, 0.3
A_DENSE = 2.0 * 1e12**ALPHA_DENSE  # dense loss 5.0 at 1e12 FLOPs
DOMAINS_IN = ["code", "prose"]
DOMAINS_OUT = ["code_heldout", "prose_heldout"]
META = {
    "study": "constructed",
    "in_domains": DOMAINS_IN,
    "out_domains": DOMAINS_OUT,
    "zero_shot_tasks": [],
    "few_shot_tasks": [],
    "finetune_tasks": [],
    "tasks": {},
    "shots": None,
    "seeds": None,
    "limit": None,
}


def dense_loss(c: float) -> float:
    return E_DENSE + A_DENSE * c**-ALPHA_DENSE


def moe_loss(speedup: float) -> Callable[[float], float]:
    """An MoE that reaches every dense loss with ``speedup`` times less compute."""
    return lambda c: dense_loss(speedup * c)


def run_rows(
    family: str,
    preset: str,
    seed: int,
    final_compute: float,
    loss: Callable[[float], float],
    *,
    branches: int = 3,
    seed_noise: float = 0.0,
    point_noise: float = 0.0,
    stable_excess: float = 0.03,
    ood_factor: float = 1.3,
    noise_seed: int = 0,
) -> list[dict]:
    """One WSD run: cooldown-branch ends at ``final / 2**k`` (annealed), a stable-phase point
    before each fork (``stable_excess`` above the frontier, not annealed), the decayed final
    point (annealed). Noise: a per-run offset (``seed_noise``, the seed's) and per point, both
    multiplicative."""
    run = f"{preset}__seed={seed}"
    rng = np.random.default_rng([zlib.crc32(run.encode()), noise_seed])
    offset = math.exp(rng.normal(0, seed_noise)) if seed_noise else 1.0
    pts = []
    for k in range(branches, 0, -1):
        c = final_compute / 2**k
        pts.append((0.8 * c, loss(0.8 * c) * (1 + stable_excess), False, False))
        pts.append((c, loss(c), True, True))
    pts.append((final_compute, loss(final_compute), True, False))
    pts.sort(key=lambda p: (p[0], p[3]))
    rows = []
    for i, (c, value, annealed, branch) in enumerate(pts):
        v = value * offset * (math.exp(rng.normal(0, point_noise)) if point_noise else 1.0)
        row = {
            "run": run,
            "family": family,
            "preset": preset,
            "seed": seed,
            "step": i + 1,
            "final": i == len(pts) - 1,
            "annealed": annealed,
            "branch": branch,
            "tokens": int(c / 1e6),
            "train_flops": c,
            "train_flops_spent": c,
            "params_total": int(final_compute / 1e6),
            "params_active": int(final_compute / 1.3e6),
            "loss_in_domain": v,
            "loss_out_of_domain": v * ood_factor,
            "loss/code": v * 0.98,
            "loss/prose": v * 1.02,
            "loss/code_heldout": v * ood_factor * 0.97,
            "loss/prose_heldout": v * ood_factor * 1.03,
            "grid.model": preset,
            "grid.seed": seed,
            "train_wall_s": 60.0 if i == len(pts) - 1 else None,
            "eval_wall_s": 10.0 if i == len(pts) - 1 else None,
        }
        rows.append(row)
    total = sum(c for c, _, _, b in pts if b) + final_compute
    rows[-1]["train_flops_spent"] = total
    return rows


def study_rows(
    *,
    speedup: float = 2.0,
    dense_computes: tuple[float, ...] = (1e12, 4e12, 1.6e13),
    moe_flops_ratio: float = 1.3,
    seeds_small: tuple[int, ...] = (1, 2, 3),
    seed_noise: float = 0.003,
    moe: Callable[[float], float] | None = None,
    dense: Callable[[float], float] = dense_loss,
    branches: int = 3,
    noise_seed: int = 0,
) -> list[dict]:
    """Dense and MoE families on WSD runs, three sizes each, replicate seeds for the smallest
    size of each family. The MoE of size i spends ``moe_flops_ratio`` times its dense partner's
    FLOPs (more active parameters per token) and follows ``moe`` (default: ``speedup`` times
    more efficient than the dense law)."""
    moe = moe or moe_loss(speedup)
    rows: list[dict] = []
    for i, c in enumerate(dense_computes):
        seeds = seeds_small if i == 0 else (1,)
        for s in seeds:
            rows += run_rows(
                "dense",
                f"dense-{i}",
                s,
                c,
                dense,
                seed_noise=seed_noise,
                branches=branches,
                noise_seed=noise_seed,
            )
        for s in seeds:
            rows += run_rows(
                "moe8-top2",
                f"moe-{i}",
                s,
                c * moe_flops_ratio,
                moe,
                seed_noise=seed_noise,
                branches=branches,
                noise_seed=noise_seed,
            )
    return rows


ZERO_SHOT_META = {
    "zero_shot_tasks": ["blimp", "hellaswag"],
    "tasks": {
        "blimp": {
            "chance": 0.5,
            "n_items": 1340,
            "score_chance": 0.5,
            "mode": "sum",
            "split": "train",
            "reference": {
                "5-gram": {"overall": 0.61, "field:syntax": 0.6, "field:morphology": 0.63},
                "GPT-2": {"overall": 0.83, "field:syntax": 0.82, "field:morphology": 0.85},
            },
            "groups_n_items": {"field:syntax": 800, "field:morphology": 540},
        },
        "hellaswag": {
            "chance": 0.25,
            "n_items": 200,
            "score_chance": 0.25,
            "mode": "char",
            "split": "validation",
            "reference": {},
            "groups_n_items": {},
        },
    },
}


def add_zero_shot(rows: list[dict], speedup: float = 2.0) -> list[dict]:
    """Zero-shot columns on each run's final row (team CONTRACT section 2): BLiMP accuracy
    rising with log compute (4 points per doubling, the MoE ``speedup`` times more efficient)
    and its fields, HellaSwag at chance; continuous scores for both, their means."""
    for r in rows:
        if not r["final"]:
            continue
        ce = r["train_flops"] * (speedup if r["family"] != "dense" else 1.0)
        doublings = math.log2(ce / 1e12)
        blimp = 0.5 + 0.04 * doublings
        hella = 0.25 + 0.001 * doublings
        cols = {
            "blimp": (blimp, 0.02, 0.5 + 0.01 * doublings + 0.005, 0.004),
            "blimp:field:syntax": (blimp - 0.01, 0.025, None, None),
            "blimp:field:morphology": (blimp + 0.015, 0.03, None, None),
            "hellaswag": (hella, 0.06, 0.25 + 0.002 * doublings + 0.001, 0.01),
        }
        for task, (acc, half, score, score_half) in cols.items():
            r[f"zero_shot/{task}"] = acc
            r[f"zero_shot_lo/{task}"] = acc - half
            r[f"zero_shot_hi/{task}"] = acc + half
            if score is not None:
                r[f"zero_shot_score/{task}"] = score
                r[f"zero_shot_score_lo/{task}"] = score - score_half
                r[f"zero_shot_score_hi/{task}"] = score + score_half
        r["zero_shot_mean"] = (r["zero_shot/blimp"] + r["zero_shot/hellaswag"]) / 2
        r["zero_shot_score_mean"] = (
            r["zero_shot_score/blimp"] + r["zero_shot_score/hellaswag"]
        ) / 2
    return rows


def points(rows: list[dict]) -> list[CurvePoint]:
    """The rows as the analysis and the report read them (results.json's rows read back)."""
    return [from_row(r) for r in rows]
