"""Learning-rate schedules: linear warmup, then linear (paper), cosine, constant, or
warmup-stable-decay (WSD) with cooldown branches; docs/training.md (*Warmup-stable-decay and
cooldown branches*, after Hägele et al. 2024) is the one account of WSD and the branches. A
pure function of the step, so resuming needs no scheduler state. A branch forked from the
stable phase at step ``s`` and decayed over ``round(s * f / (1 - f))`` steps is exactly the end
of a WSD run of ``s / (1 - f)`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("linear", "cosine", "constant", "wsd")


@dataclass(frozen=True)
class LrSchedule:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "linear"  # one of KINDS
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.2  # wsd only: the share of the steps spent decaying

    @property
    def decay_start(self) -> int:
        """wsd: the last step at the peak rate (the decay's steps follow it)."""
        return self.total_steps - decay_steps(self.total_steps, self.decay_fraction)

    def __call__(self, step: int) -> float:
        """Learning rate for update number ``step`` (1-based: the first update is step 1)."""
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "wsd":
            start = max(self.decay_start, self.warmup_steps)
            if step <= start:
                return self.peak_lr
            return cooldown_lr(
                self.peak_lr, self.min_lr_ratio, step - start, self.total_steps - start
            )
        decay_steps_ = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / decay_steps_))
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        floor = self.min_lr_ratio
        return self.peak_lr * (floor + (1.0 - floor) * shape)

    def ends_annealed(self) -> bool:
        """Whether the last step's rate is the schedule's floor (every kind but constant)."""
        return self.kind != "constant"


def decay_steps(total_steps: int, decay_fraction: float) -> int:
    """Steps of a WSD decay for a run of ``total_steps`` (at least one)."""
    return max(1, round(total_steps * decay_fraction))


def cooldown_lr(peak_lr: float, min_lr_ratio: float, j: int, length: int) -> float:
    """Rate at the ``j``-th of ``length`` decay steps (1-based): linear from the peak to the
    floor, which the last step reaches."""
    shape = 1.0 - min(1.0, j / max(1, length))
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * shape)


@dataclass(frozen=True)
class Cooldown:
    """A branch forked after update ``fork_step`` and decayed over ``length`` updates: it ends
    where a WSD run of ``fork_step + length`` steps ends."""

    fork_step: int
    length: int

    @property
    def end_step(self) -> int:
        return self.fork_step + self.length


def cooldown_plan(schedule: LrSchedule, n_branches: int) -> list[Cooldown]:
    """``n_branches`` cooldowns forked from the stable phase, each fork half the step of the
    next, the last at half the main decay's start (budgets a factor 2 apart, like the final
    point to the largest branch). Forks inside the warmup are left out, so fewer may come back.
    The branch length keeps the main run's decay fraction: ``round(s * f / (1 - f))``."""
    if schedule.kind != "wsd" or n_branches <= 0:
        return []
    f = schedule.decay_fraction
    out: list[Cooldown] = []
    for i in range(1, n_branches + 1):
        # a WSD run of total / 2**i steps: its decay starts at this fork
        total_i = round(schedule.total_steps / 2**i)
        fork = total_i - decay_steps(total_i, f)
        # Forks must lie in the stable phase (after warmup, before the main decay) and be
        # distinct: tiny runs have room for fewer branches than asked.
        if fork <= schedule.warmup_steps or fork < 1:
            break
        if fork >= schedule.decay_start or any(c.fork_step == fork for c in out):
            continue
        out.append(Cooldown(fork, total_i - fork))
    return sorted(out, key=lambda c: c.fork_step)
