"""Turn a budget (training FLOPs, tokens or steps) into a number of optimizer steps.

FLOPs use the paper's accounting: ``moelab.flops.train_flops_per_token(model, seq_len)`` times
tokens. Steps are whole batches, so the run takes the first step at which the budget is met
(``ceil``); the overshoot is under one batch and ``done.json`` reports both figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moelab.flops import train_flops_per_token
from moelab.train.config import RunConfig
from moelab.train.schedule import LrSchedule, cooldown_plan


@dataclass(frozen=True)
class Budget:
    kind: str  # "flops" | "tokens" | "steps"
    requested: float  # in the budget's own unit
    total_steps: int
    tokens_per_step: int
    flops_per_token: float
    warmup_steps: int

    def tokens_at(self, step: int) -> int:
        return step * self.tokens_per_step

    def flops_at(self, step: int) -> float:
        return self.flops_per_token * self.tokens_at(step)

    @property
    def total_tokens(self) -> int:
        return self.tokens_at(self.total_steps)

    @property
    def total_flops(self) -> float:
        return self.flops_at(self.total_steps)


def resolve_budget(cfg: RunConfig) -> Budget:
    t = cfg.train
    tokens_per_step = t.batch_size * t.seq_len
    fpt = train_flops_per_token(cfg.model, t.seq_len)
    if t.budget_steps:
        kind, requested, steps = "steps", float(t.budget_steps), int(t.budget_steps)
    elif t.budget_tokens:
        kind, requested = "tokens", float(t.budget_tokens)
        steps = math.ceil(t.budget_tokens / tokens_per_step)
    else:
        kind, requested = "flops", float(t.budget_flops)
        steps = math.ceil(t.budget_flops / (fpt * tokens_per_step))
    steps = max(1, steps)
    if t.warmup_steps is not None:
        warmup = t.warmup_steps
    elif t.warmup_tokens is not None:
        warmup = math.ceil(t.warmup_tokens / tokens_per_step)
    else:
        warmup = math.ceil(0.01 * steps)
    return Budget(kind, requested, steps, tokens_per_step, fpt, min(warmup, steps))


def schedule_of(cfg: RunConfig, budget: Budget):
    """The run's learning-rate schedule (a pure function of the step)."""
    t = cfg.train
    return LrSchedule(
        t.lr, budget.warmup_steps, budget.total_steps, t.schedule, t.min_lr_ratio, t.decay_fraction
    )


def cooldowns_of(cfg: RunConfig, budget: Budget):
    """The run's cooldown branches (``moelab.train.schedule.Cooldown``), in fork order."""
    return cooldown_plan(schedule_of(cfg, budget), cfg.train.cooldowns)


def eval_steps(total_steps: int, points: int) -> list[int]:
    """``points`` log-spaced steps from 1 to ``total_steps`` (deduplicated), always including
    the final step: the same steps for every run with the same step count."""
    if points <= 1 or total_steps <= 1:
        return [total_steps]
    raw = np.geomspace(1, total_steps, points)
    steps = sorted({int(round(s)) for s in raw} | {total_steps})
    return [s for s in steps if 1 <= s <= total_steps]
