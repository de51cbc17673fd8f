"""Learning-rate schedule: linear warmup, then linear (paper) or cosine decay to a floor.

A pure function of the step, so resuming needs no scheduler state: the step number is enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LrSchedule:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "linear"  # "linear" | "cosine" | "constant"
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        """Learning rate for update number ``step`` (1-based: the first update is step 1)."""
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / decay_steps))
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        floor = self.min_lr_ratio
        return self.peak_lr * (floor + (1.0 - floor) * shape)
