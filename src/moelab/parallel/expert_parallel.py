"""Expert parallelism: the MoE layer with its experts split over an expert group of ``ep``
ranks, rank j holding experts ``j * E/ep .. (j+1) * E/ep - 1``. docs/distributed.md (*Layout*)
is the one account of the exchange, the expert copies and the expert-gradient normalisation.

A forward pass on each rank: (1) routes its local tokens and sorts the kept assignments by
expert (the layer's own ``route`` and ``plan_dispatch``, capacity from the local batch); (2)
sends each to the rank owning its expert with ``all_to_all_single`` (dropless: uneven splits,
the counts first, checking the model width; capacity: fixed ``(E, C, D)`` buffers); (3) runs
the local experts on what arrives (the model's :class:`~moelab.model.moe.Experts` maths on the
local weights); (4) sends the outputs back. :func:`expert_parallel` keeps the layer a
:class:`~moelab.model.moe.MoeFFN` and sets its ``exchange`` to an :class:`ExpertExchange`,
which does steps 2-4; gradients take the same path backwards (:func:`expert_grad`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.func import functional_call

from moelab.errors import MoelabError
from moelab.model.moe import DispatchPlan, Experts, MoeFFN
from moelab.parallel.collectives import ExchangeTimer, agree_max, all_to_all, expert_grad

GRAD_NORMALISATIONS = ("exact", "paper")


def expert_grad_divisor(kind: str, world: int) -> float:
    """What an expert weight's summed gradient is divided by: ``exact`` -> world (the gradient
    of the mean loss, like the dense parts), ``paper`` -> sqrt(world) (fairseq)."""
    if kind == "exact":
        return float(world)
    if kind == "paper":
        return math.sqrt(world)
    raise MoelabError(
        f"expert gradient normalisation must be one of {', '.join(GRAD_NORMALISATIONS)}, "
        f"got {kind!r}"
    )


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


class ExpertExchange(nn.Module):
    """A :class:`MoeFFN`'s ``exchange`` under expert parallelism: sends the gathered tokens
    to the ranks holding their experts, runs this rank's experts on what arrives and sends
    the outputs back (steps 2-4 of the module docstring). No parameters: the layer's
    ``experts`` hold this rank's ``E / ep`` experts.

    ``ep_group`` is the expert group (None when ``ep == 1``), ``edp_group`` the ranks holding
    the same experts (None or size 1: nothing to sum). ``timer`` accumulates the all-to-all
    time in training (read by the trainer's telemetry); ``layer`` is the layer's index.
    """

    def __init__(
        self,
        *,
        layer: int,
        n_experts: int,
        ep: int,
        ep_rank: int,
        ep_group=None,
        edp_group=None,
        grad_divisor: float = 1.0,
    ):
        super().__init__()
        self.layer, self.n_experts = layer, n_experts
        self.ep, self.ep_rank = ep, ep_rank
        self.ep_group, self.edp_group = ep_group, edp_group
        self.grad_divisor = grad_divisor
        self.n_local = n_experts // ep
        self.timer = ExchangeTimer()

    @property
    def expert_offset(self) -> int:
        """Global index of this rank's first expert."""
        return self.ep_rank * self.n_local

    def _timer(self) -> ExchangeTimer | None:
        return self.timer if self.training else None  # training exchanges only, not eval

    def forward(
        self, x_ND: torch.Tensor, plan: DispatchPlan, capacity: int | None, experts: Experts
    ) -> torch.Tensor:
        """Expert outputs for the rows of ``x_ND`` (plan order, dropped rows removed)."""
        if self.ep == 1:
            return self._run_local(experts, x_ND, plan.counts)
        if capacity is None:
            return self._dropless(experts, x_ND, plan.counts, plan.counts_E)
        return self._capacity(experts, x_ND, plan.counts_E, capacity)

    # -- local experts ------------------------------------------------------------------------

    def _run_local(self, experts: Experts, x_ND: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The layer's Experts on the local weights; the weights' gradients pass through
        :func:`expert_grad` (sum over the expert-data-parallel copies, divide)."""
        weights = {}
        for name, p in experts.named_parameters():
            w = expert_grad(_local(p), self.edp_group, self.grad_divisor)
            # Under FSDP's bf16 param dtype the tokens arrive in bf16: compute experts in it.
            weights[name] = w if w.dtype == x_ND.dtype else w.to(x_ND.dtype)
        return functional_call(experts, weights, (x_ND, counts))

    # -- exchanges ------------------------------------------------------------------------------

    def _dropless(
        self, experts: Experts, x_ND: torch.Tensor, counts: list[int], counts_E: torch.Tensor
    ) -> torch.Tensor:
        ep, El = self.ep, self.n_local
        D = x_ND.shape[1]
        # Header: my counts for rank j's experts, plus my width D (checked on arrival).
        width = counts_E.new_full((ep, 1), D)
        header_send = torch.cat([counts_E.view(ep, El), width], dim=1).reshape(-1)
        header_recv = torch.empty_like(header_send)
        torch.distributed.all_to_all_single(header_recv, header_send, group=self.ep_group)
        rows = header_recv.view(ep, El + 1).tolist()  # one host sync: split sizes
        widths = {row[El] for row in rows}
        if widths != {D}:
            raise MoelabError(
                f"MoE layer {self.layer}: ranks disagree on the model width ({sorted(widths)}); "
                "every rank must build the same model config"
            )
        recv_SE = [row[:El] for row in rows]  # [source rank][local expert]
        in_splits = [sum(counts[j * El : (j + 1) * El]) for j in range(ep)]
        out_splits = [sum(r) for r in recv_SE]
        x_recv = all_to_all(x_ND, out_splits, in_splits, self.ep_group, self._timer())
        # Received blocks are [source][expert]; the experts need [expert][source].
        chunks = x_recv.split([c for r in recv_SE for c in r])
        x_grouped = torch.cat([chunks[s * El + e] for e in range(El) for s in range(ep)])
        local_counts = [sum(recv_SE[s][e] for s in range(ep)) for e in range(El)]
        y_grouped = self._run_local(experts, x_grouped, local_counts)
        y_chunks = y_grouped.split([recv_SE[s][e] for e in range(El) for s in range(ep)])
        y_recv = torch.cat([y_chunks[e * ep + s] for s in range(ep) for e in range(El)])
        return all_to_all(y_recv, in_splits, out_splits, self.ep_group, self._timer())

    def _capacity(
        self, experts: Experts, x_ND: torch.Tensor, counts_E: torch.Tensor, capacity: int
    ) -> torch.Tensor:
        ep, El, E = self.ep, self.n_local, self.n_experts
        N, D = x_ND.shape
        # One all-reduce: the group's largest capacity (buffers must agree; each rank still
        # drops by its own local capacity) and a check that the widths agree.
        C, d_max, neg_d_min = agree_max([capacity, D, -D], self.ep_group, x_ND.device)
        if d_max != -neg_d_min:
            raise MoelabError(
                f"MoE layer {self.layer}: ranks disagree on the model width "
                f"({-neg_d_min} vs {d_max}); every rank must build the same model config"
            )
        # Kept assignments of expert e take its slots 0 .. counts[e]-1 (slot order).
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        expert_N = torch.repeat_interleave(
            torch.arange(E, device=x_ND.device), counts_E, output_size=N
        )
        pos_N = expert_N * C + torch.arange(N, device=x_ND.device) - starts_E[expert_N]
        buf_ECD = x_ND.new_zeros(E * C, D).index_copy(0, pos_N, x_ND)
        split = [El * C] * ep
        # Received: [source][expert][slot].
        recv = all_to_all(buf_ECD, split, split, self.ep_group, self._timer())
        grouped = recv.view(ep, El, C, D).transpose(0, 1).reshape(El * ep * C, D)
        y = self._run_local(experts, grouped, [ep * C] * El)  # padding rows are never read back
        y_recv = y.view(El, ep, C, D).transpose(0, 1).reshape(ep * El * C, D)
        y_ECD = all_to_all(y_recv, split, split, self.ep_group, self._timer())
        return y_ECD.index_select(0, pos_N)


def expert_parallel(moe: MoeFFN, *, ep: int, ep_rank: int, **groups: Any) -> MoeFFN:
    """Make ``moe`` expert-parallel in place and return it: its experts become this rank's
    ``E / ep`` (rank ``ep_rank`` keeps experts ``ep_rank * E/ep ..``), its ``exchange`` an
    :class:`ExpertExchange` (``groups``: its ``ep_group``, ``edp_group``, ``grad_divisor``).
    The router stays whole (replicated). New expert tensors are made where the old ones are
    (on the meta device: nothing is allocated)."""
    if moe.n_experts % ep:
        raise MoelabError(
            f"expert-parallel degree {ep} does not divide model.n_experts={moe.n_experts}"
        )
    exchange = ExpertExchange(
        layer=moe.layer, n_experts=moe.n_experts, ep=ep, ep_rank=ep_rank, **groups
    )
    lo, hi = exchange.expert_offset, exchange.expert_offset + exchange.n_local
    experts = moe.experts
    with torch.no_grad():
        for name, p in list(experts.named_parameters()):
            local = p[lo:hi].clone()  # its own storage: the full tensor can go
            setattr(experts, name, nn.Parameter(local, requires_grad=p.requires_grad))
    moe.exchange = exchange
    return moe


def is_expert_parallel(module: nn.Module) -> bool:
    """Whether ``module`` is an MoE layer made expert-parallel by :func:`expert_parallel`."""
    return isinstance(module, MoeFFN) and isinstance(module.exchange, ExpertExchange)


def apply_expert_parallel(model: nn.Module, **options) -> list[MoeFFN]:
    """Make every :class:`MoeFFN` of ``model`` expert-parallel (in place) holding this rank's
    experts: :func:`expert_parallel` with ``options`` (``ep``, ``ep_rank``, ``ep_group``,
    ``edp_group``, ``grad_divisor``). Returns the layers in model order."""
    layers = [m for m in model.modules() if isinstance(m, MoeFFN) and not is_expert_parallel(m)]
    for layer in layers:
        expert_parallel(layer, **options)
    return layers
