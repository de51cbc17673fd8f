"""Expert parallelism: the MoE layer with its experts split over an expert group of ranks.

Each rank of an expert group of ``ep`` ranks holds ``E / ep`` experts (rank j: experts
``j * E/ep .. (j+1) * E/ep - 1``). A forward pass on rank r:

1. routes its *local* tokens with :func:`moelab.model.moe.route` (capacity from the local batch,
   as in the paper) and sorts the kept assignments by expert (:func:`plan_dispatch`);
2. sends every assignment to the rank that owns its expert with ``all_to_all_single``:
   - dropless: uneven splits; the per-expert counts travel first (one small all-to-all, which
     also checks that all ranks agree on the model width);
   - capacity: fixed ``(E, C, D)`` buffers (expert e's kept assignments in its first slots, the
     rest zeros), equal splits, no count exchange; C is the largest local capacity of the group;
3. runs its local experts on the received rows grouped by expert (the model's own
   :class:`~moelab.model.moe.Experts` maths, called with the local weights);
4. sends the outputs back the same way and combines them into its tokens.

Gradients follow the same path backwards. An expert weight's gradient then holds the sum over
all ranks of the group of d(local loss)/dw; it is summed over the ``edp`` copies of the group
and divided by ``grad_divisor``: ``world`` gives the gradient of the mean loss over all ranks
(exact, the same as one process), ``sqrt(world)`` is fairseq's ``sqrt_world_size`` (the paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.func import functional_call

from moelab.errors import MoelabError
from moelab.model.moe import (
    Experts,
    MoeFFN,
    MoeOutput,
    combine,
    expert_capacity,
    plan_dispatch,
    route,
)
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


class ExpertParallelMoeFFN(MoeFFN):
    """A :class:`MoeFFN` whose ``experts`` hold only this rank's ``E / ep`` experts.

    Built from a full layer (the router is shared, the expert weights sliced: rank
    ``ep_rank`` keeps experts ``ep_rank * E/ep ..``); routing, its losses and telemetry are the
    base class's, computed on the local tokens.
    ``ep_group`` is the expert group (None when ``ep == 1``), ``edp_group`` the ranks holding
    the same experts (None or size 1: nothing to sum).
    """

    def __init__(
        self,
        moe: MoeFFN,
        *,
        ep: int,
        ep_rank: int,
        ep_group=None,
        edp_group=None,
        grad_divisor: float = 1.0,
    ):
        nn.Module.__init__(self)  # the base __init__ would allocate all E experts again
        if moe.n_experts % ep:
            raise MoelabError(
                f"expert-parallel degree {ep} does not divide model.n_experts={moe.n_experts}"
            )
        # Every plain attribute of the layer (layer, n_experts, top_k, policy, capacity
        # factors, generator, training, and any added later); submodules are set below.
        for attr, value in vars(moe).items():
            if not attr.startswith("_"):
                setattr(self, attr, value)
        self.ep, self.ep_rank = ep, ep_rank
        self.ep_group, self.edp_group = ep_group, edp_group
        self.grad_divisor = grad_divisor
        self.timer = ExchangeTimer()  # all-to-all time, read by the trainer's telemetry
        self.n_local = moe.n_experts // ep
        self.gate = moe.gate
        full = moe.experts
        _, D, Fd = full.w1.shape
        self.experts = Experts(self.n_local, D, Fd, full.arch, full.activation_dropout).to(
            device=full.w1.device, dtype=full.w1.dtype
        )
        lo = ep_rank * self.n_local
        with torch.no_grad():
            for name, p in self.experts.named_parameters():
                p.copy_(getattr(full, name)[lo : lo + self.n_local])

    @property
    def expert_offset(self) -> int:
        """Global index of this rank's first expert."""
        return self.ep_rank * self.n_local

    def _timer(self) -> ExchangeTimer | None:
        return self.timer if self.training else None  # training exchanges only, not eval

    # -- local experts ------------------------------------------------------------------------

    def _run_local(self, x_ND: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The model's Experts maths on the local weights; the weights' gradients pass through
        :func:`expert_grad` (sum over the expert-data-parallel copies, divide)."""
        weights = {}
        for name, p in self.experts.named_parameters():
            w = expert_grad(_local(p), self.edp_group, self.grad_divisor)
            # Under FSDP's bf16 param dtype the tokens arrive in bf16: compute experts in it.
            weights[name] = w if w.dtype == x_ND.dtype else w.to(x_ND.dtype)
        return functional_call(self.experts, weights, (x_ND, counts))

    # -- exchanges ------------------------------------------------------------------------------

    def _dropless(self, x_ND: torch.Tensor, counts: list[int], counts_E: torch.Tensor):
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
        y_grouped = self._run_local(x_grouped, local_counts)
        y_chunks = y_grouped.split([recv_SE[s][e] for e in range(El) for s in range(ep)])
        y_recv = torch.cat([y_chunks[e * ep + s] for s in range(ep) for e in range(El)])
        return all_to_all(y_recv, in_splits, out_splits, self.ep_group, self._timer())

    def _capacity(self, x_ND: torch.Tensor, counts_E: torch.Tensor, capacity: int):
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
        y = self._run_local(grouped, [ep * C] * El)  # padding rows are never read back
        y_recv = y.view(El, ep, C, D).transpose(0, 1).reshape(ep * El * C, D)
        y_ECD = all_to_all(y_recv, split, split, self.ep_group, self._timer())
        return y_ECD.index_select(0, pos_N)

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x_BTD: torch.Tensor) -> MoeOutput:
        B, T, D = x_BTD.shape
        S = B * T
        x_SD = x_BTD.reshape(S, D)
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = expert_capacity(S, self.n_experts, self.top_k, cf)
        routing = route(
            self.router_logits(x_SD),
            self.top_k,
            capacity,
            self.policy,
            generator=self.generator,
            training=self.training,
        )
        plan = plan_dispatch(routing).kept()  # the splits need the counts on the host
        x_ND = x_SD.index_select(0, plan.token_N)
        if self.ep == 1:
            y_ND = self._run_local(x_ND, plan.counts)
        elif capacity is None:
            y_ND = self._dropless(x_ND, plan.counts, plan.counts_E)
        else:
            y_ND = self._capacity(x_ND, plan.counts_E, capacity)
        y_SD = combine(y_ND, plan, S)
        return MoeOutput(
            y_BTD=y_SD.view(B, T, D),
            aux_loss=routing.aux_loss,
            z_loss=routing.z_loss,
            stats=routing.stats(self.layer),
        )


def apply_expert_parallel(
    model: nn.Module,
    *,
    ep: int,
    ep_rank: int,
    ep_group=None,
    edp_group=None,
    grad_divisor: float = 1.0,
) -> list[ExpertParallelMoeFFN]:
    """Replace every :class:`MoeFFN` in ``model`` (in place) by its expert-parallel version
    holding this rank's experts. Returns the new layers in model order."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoeFFN) and not isinstance(child, ExpertParallelMoeFFN):
                layer = ExpertParallelMoeFFN(
                    child,
                    ep=ep,
                    ep_rank=ep_rank,
                    ep_group=ep_group,
                    edp_group=edp_group,
                    grad_divisor=grad_divisor,
                )
                setattr(parent, name, layer)
                swapped.append(layer)
    return swapped
