"""Settings of a distributed run that are not part of the run config (they change how the work
is spread over processes, not what is computed), read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from moelab.errors import MoelabError
from moelab.parallel.expert_parallel import GRAD_NORMALISATIONS
from moelab.parallel.launch import timeout_from_env

ENV_EP = "MOELAB_EP"
ENV_EXPERT_GRAD = "MOELAB_EXPERT_GRAD"
ENV_BF16_PARAMS = "MOELAB_FSDP_BF16"


@dataclass
class ParallelOptions:
    """``ep``: expert-parallel degree (None: gcd(world, n_experts)); ``expert_grad``: ``exact``
    (expert gradients divided by world, the same as one process) or ``paper`` (by sqrt(world),
    fairseq); ``bf16_params``: FSDP2 computes in bf16 with fp32 master weights and reductions;
    ``timeout_s``: bound on every collective."""

    ep: int | None = None
    expert_grad: str = "exact"
    bf16_params: bool = False
    timeout_s: float = 300.0

    @classmethod
    def from_env(cls) -> ParallelOptions:
        ep = os.environ.get(ENV_EP)
        if ep is not None:
            try:
                ep_value: int | None = int(ep)
            except ValueError:
                raise MoelabError(f"{ENV_EP}={ep!r}: expected an integer") from None
        else:
            ep_value = None
        grad = os.environ.get(ENV_EXPERT_GRAD, "exact")
        if grad not in GRAD_NORMALISATIONS:
            raise MoelabError(
                f"{ENV_EXPERT_GRAD}={grad!r}: expected one of {', '.join(GRAD_NORMALISATIONS)}"
            )
        bf16 = os.environ.get(ENV_BF16_PARAMS, "0").lower() in ("1", "true", "yes")
        return cls(ep=ep_value, expert_grad=grad, bf16_params=bf16, timeout_s=timeout_from_env())
