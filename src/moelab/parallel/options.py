"""The run config's ``parallel:`` section: how a run is spread over processes. docs/distributed.md
(*The parallel: section*) is the one account of its keys, which of them enter the config hash
(:data:`NUMERIC_KEYS`) and the environment variables of earlier versions that stay as overrides
(:meth:`ParallelConfig.with_env`; the trainer stores the result in ``config.yaml``). Light on
purpose (no torch import): every run config holds one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from moelab.errors import MoelabError

ENV_EP = "MOELAB_EP"
ENV_EXPERT_GRAD = "MOELAB_EXPERT_GRAD"
ENV_BF16_PARAMS = "MOELAB_FSDP_BF16"
ENV_TIMEOUT = "MOELAB_DIST_TIMEOUT_S"

EXPERT_GRADS = ("exact", "paper")
DTYPES = ("fp32", "bf16")
DEFAULT_TIMEOUT_S = 300.0

# The keys that change the numbers a run computes (the rest: the config hash leaves them out).
NUMERIC_KEYS = ("expert_grad", "param_dtype", "reduce_dtype")


def _choice(raw: str) -> str:
    if raw not in EXPERT_GRADS:
        raise ValueError(raw)
    return raw


def _flag_bf16(raw: str) -> str | None:
    return "bf16" if raw.lower() in ("1", "true", "yes") else None  # None: no override


# key -> (environment variable, parser of its value (ValueError: refused), what it expects)
_OVERRIDES = {
    "ep": (ENV_EP, int, "an integer"),
    "expert_grad": (ENV_EXPERT_GRAD, _choice, "one of exact, paper"),
    "param_dtype": (ENV_BF16_PARAMS, _flag_bf16, "1"),
    "timeout_s": (ENV_TIMEOUT, float, "a number of seconds"),
}


@dataclass
class ParallelConfig:
    """The ``parallel:`` section (docs/distributed.md describes every key):
    ``activation_checkpointing`` applies to every run, the rest to runs of several processes."""

    ep: int | None = None
    expert_grad: str = "exact"
    param_dtype: str = "fp32"
    reduce_dtype: str = "fp32"
    timeout_s: float = DEFAULT_TIMEOUT_S
    activation_checkpointing: bool = False

    def validate(self) -> ParallelConfig:
        def bad(key: str, why: str) -> MoelabError:
            return MoelabError(f"parallel.{key}: {why}")

        if self.ep is not None and self.ep < 1:
            raise bad("ep", f"must be >= 1 or null (gcd of world and n_experts), got {self.ep}")
        if self.expert_grad not in EXPERT_GRADS:
            raise bad("expert_grad", f"must be exact or paper, got {self.expert_grad!r}")
        for key in ("param_dtype", "reduce_dtype"):
            if getattr(self, key) not in DTYPES:
                raise bad(key, f"must be fp32 or bf16, got {getattr(self, key)!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise bad("timeout_s", f"must be a number of seconds > 0, got {self.timeout_s}")
        if not isinstance(self.activation_checkpointing, bool):
            raise bad(
                "activation_checkpointing",
                f"must be true or false, got {self.activation_checkpointing!r}",
            )
        return self

    def with_env(self) -> tuple[ParallelConfig, list[str]]:
        """This config with the environment's overrides applied (``MOELAB_EP``,
        ``MOELAB_EXPERT_GRAD``, ``MOELAB_FSDP_BF16=1``: param_dtype bf16,
        ``MOELAB_DIST_TIMEOUT_S``), and a note per key an override changed."""
        changes: dict[str, object] = {}
        for key, (var, parse, expected) in _OVERRIDES.items():
            raw = os.environ.get(var)
            if raw is None:
                continue
            try:
                value = parse(raw)
            except ValueError:
                raise MoelabError(f"{var}={raw!r}: expected {expected}") from None
            if value is not None:
                changes[key] = value
        notes = [
            f"parallel.{k}: {v}, from {_OVERRIDES[k][0]}"
            for k, v in changes.items()
            if getattr(self, k) != v
        ]
        try:
            new = dataclasses.replace(self, **changes).validate()
        except MoelabError as e:  # name the variable, not only the key it set
            key, why = str(e).removeprefix("parallel.").split(": ", 1)
            var = _OVERRIDES[key][0] if key in _OVERRIDES else f"parallel.{key}"
            raise MoelabError(f"{var}: {why}") from None
        return new, notes

    def hashed(self) -> dict[str, object]:
        """The keys of this section that enter the config hash: the numeric ones, and only
        where they differ from the default, so runs from before the section existed keep their
        hash (and resume)."""
        default = ParallelConfig()
        return {
            f"parallel.{k}": getattr(self, k)
            for k in NUMERIC_KEYS
            if getattr(self, k) != getattr(default, k)
        }
