"""Mixture-of-Experts FFN: router, capacity, sorted dispatch over stacked expert weights, in
three steps with plain data between them, :func:`route` (-> :class:`Routing`),
:func:`plan_dispatch` (-> :class:`DispatchPlan`, on the device, no host sync) and
:func:`combine`, so expert parallelism can slot an all-to-all between the last two without
touching the maths. docs/model.md (*The MoE layer*) is the one account of each step and of the
fairseq Top2Gate / Top1Gate semantics the defaults follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.model.ffn import FeedForward
from moelab.model.grouped import (
    compute_dtype,
    grouped_ffn,
    grouped_linear,
    grouped_mm_ffn,
    use_grouped_mm,
)

POLICIES = ("all", "sampling", "random")
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class MoeStats:
    """Telemetry of one MoE layer for one forward pass (all tensors detached).

    ``tokens_routed_E`` counts assignments (all ranks) per expert before capacity dropping,
    ``tokens_kept_E`` after it. ``dropped_frac_K[r]`` is the fraction of rank-r assignments
    dropped for capacity (rank 0 = top-1). ``gate_entropy`` is the mean over tokens of the
    router distribution's entropy (nats); ``aux_loss`` is this layer's unweighted balancing loss.
    ``max_vio`` (max load / mean load - 1, Wang et al. 2024) and ``dead_experts`` (experts with
    no assignment) are :func:`load_balance` of ``tokens_routed_E``.
    """

    layer: int
    capacity: int | None
    tokens_routed_E: torch.Tensor
    tokens_kept_E: torch.Tensor
    dropped_frac_K: torch.Tensor
    gate_entropy: torch.Tensor
    aux_loss: torch.Tensor
    max_vio: torch.Tensor
    dead_experts: torch.Tensor


def load_balance(load_E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MaxVio, dead experts) of per-expert assignment counts: ``max(load) / mean(load) - 1``
    (0 when balanced; 0 for no tokens at all) and the number of experts with no assignment.
    For a whole step or logging interval, pass the counts summed over it (and over ranks)."""
    load = load_E.double()
    mean = load.mean()
    max_vio = torch.where(mean > 0, load.max() / mean.clamp_min(1e-300) - 1.0, 0.0)
    return max_vio, (load_E == 0).sum()


@dataclass
class Routing:
    """Result of :func:`route` for S tokens, E experts, top-K.

    ``expert_SK``: chosen expert per token and rank. ``slot_SK``: position of the assignment in
    its expert's queue (rank-0 assignments first in token order, then rank 1, ...); -1 where the
    assignment was skipped by the ``random`` policy. ``kept_SK``: offered and within capacity.
    ``combine_SK``: float32 weight of each assignment in the output (0 where not kept), carrying
    the gradient to the router. ``probs_SE``: the router distribution (softmax; for sigmoid
    scores, the scores normalised per token) that the balancing loss and entropy read.
    ``aux_loss``: E * sum_e me_e * ce_e at the routing's scope. ``z_loss``:
    mean_s logsumexp(logits_s)^2. ``top1_counts_E``: tokens whose rank-0 choice is e (the
    loss's ce before dividing). ``all_kept``: every assignment is kept (dropless, no skipped
    second choice), known without looking at the data.
    """

    expert_SK: torch.Tensor
    slot_SK: torch.Tensor
    kept_SK: torch.Tensor
    offered_SK: torch.Tensor
    combine_SK: torch.Tensor
    probs_SE: torch.Tensor
    capacity: int | None
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    top1_counts_E: torch.Tensor | None = None
    all_kept: bool = False

    @property
    def n_experts(self) -> int:
        return self.probs_SE.shape[1]

    def stats(self, layer: int) -> MoeStats:
        # Tensors only, fixed shapes: no host sync, nothing that breaks a compiled graph.
        E = self.n_experts
        offered = self.offered_SK
        routed_E = _bincount(torch.where(offered, self.expert_SK, E), E + 1)[:E]
        kept_E = _bincount(torch.where(self.kept_SK, self.expert_SK, E), E + 1)[:E]
        dropped_K = (offered & ~self.kept_SK).sum(0).float()
        dropped_frac_K = dropped_K / offered.sum(0).clamp_min(1).float()
        p = self.probs_SE.detach()
        entropy = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1).mean()
        max_vio, dead = load_balance(routed_E)
        return MoeStats(
            layer=layer,
            capacity=self.capacity,
            tokens_routed_E=routed_E,
            tokens_kept_E=kept_E,
            dropped_frac_K=dropped_frac_K,
            gate_entropy=entropy,
            aux_loss=self.aux_loss.detach(),
            max_vio=max_vio,
            dead_experts=dead,
        )


def expert_capacity(
    n_tokens: int, n_experts: int, k: int, capacity_factor: float | None
) -> int | None:
    """Slots per expert; None (dropless) when cf is None.

    k == 1: int(cf * ceil(S / E)), fairseq's Top1Gate expression (rounds down, float noise and
    all); at least 1, where fairseq would build a zero-slot layer and fail.
    k >= 2: ceil(cf * k * ceil(S / E)); at cf = 1 and k = 2 fairseq's Top2Gate 2 * ceil(S / E)
    (fairseq's top-2 has no capacity factor).
    """
    if capacity_factor is None:
        return None
    per_expert = math.ceil(n_tokens / n_experts)
    if k == 1:
        return max(1, int(capacity_factor * per_expert))
    # round() guards against float noise such as 1.1 * 2 * 5 = 11.000000000000002.
    return max(1, math.ceil(round(capacity_factor * k * per_expert, 9)))


def _bincount(index: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.bincount(index, minlength=n)`` for ``index < n``, of fixed length n: bincount's
    length depends on the data (a host sync on CUDA, a graph break under torch.compile)."""
    flat = index.reshape(-1)
    return flat.new_zeros(n).scatter_add_(0, flat, torch.ones_like(flat))


def _queue_positions(expert_A: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For assignments listed in priority order (expert id, or ``n_experts`` for 'none'),
    return each one's position in its expert's queue and the stable by-expert sort order."""
    sorted_A, order_A = torch.sort(expert_A, stable=True)
    counts = _bincount(sorted_A, n_experts + 1)
    starts = torch.cumsum(counts, 0) - counts
    pos_sorted = torch.arange(expert_A.numel(), device=expert_A.device) - starts[sorted_A]
    pos_A = torch.empty_like(pos_sorted)
    pos_A[order_A] = pos_sorted
    return pos_A, order_A


def route(
    router_logits_SE: torch.Tensor,
    k: int,
    capacity: int | None,
    policy: str = "all",
    generator: torch.Generator | None = None,
    training: bool = False,
    *,
    score: str = "softmax",
    norm_topk: bool | None = None,
    route_scale: float = 1.0,
    bias_E: torch.Tensor | None = None,
    seq_len: int | None = None,
) -> Routing:
    """Top-k routing with capacity, fairseq semantics by default (a pure function of its inputs;
    docs/model.md, *The MoE layer* and *Beyond the paper*, is the one account of the choice and
    its ties, the policies, capacity, combine weights and the balancing loss). ``score``:
    softmax (the paper) or sigmoid (DeepSeek-V3); ``bias_E``: the balancing bias, added to the
    scores for the choice only; ``policy``: the second expert's (k == 2 and ``training`` only,
    softmax without bias); ``capacity``: slots per expert (None keeps everything);
    ``norm_topk``: renormalise each token's kept weights (None: iff k >= 2), then times
    ``route_scale``; ``seq_len``: the loss per sequence of that many tokens, averaged (the
    global-batch scope is :func:`global_batch_loss` of the routing).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown second-expert policy {policy!r}")
    logits_SE = router_logits_SE.float()
    S, E = logits_SE.shape
    if not 1 <= k <= E:
        raise ValueError(f"top-k must be in [1, {E}], got {k}")
    if score == "softmax":
        scores_SE = probs_SE = torch.softmax(logits_SE, dim=-1)
    elif score == "sigmoid":
        scores_SE = torch.sigmoid(logits_SE)
        # clamped: far-negative logits underflow every score to 0 (0 / 0 would be NaN)
        probs_SE = scores_SE / scores_SE.sum(dim=-1, keepdim=True).clamp_min(_TINY)
    else:
        raise ValueError(f"unknown router score {score!r}")
    use_policy = training and k == 2 and policy != "all"
    if use_policy and (score != "softmax" or bias_E is not None):
        raise ValueError(f"policy {policy!r} needs softmax scores without a balancing bias")

    with torch.no_grad():
        if score == "softmax" and bias_E is None:
            # Rank 0 is the argmax of the probabilities (fairseq's top1/top2gating); later ranks
            # the argmax of the *logits* with earlier ranks masked (fairseq's logits_except1).
            # They differ where far-below logits (gaps > ~100) underflow to probability exactly
            # 0: the logits still order those experts, the probabilities would tie them at the
            # lowest index. argmax returns the first maximal index: ties go to the lowest expert.
            rank0_SE, rest_SE = probs_SE.detach(), logits_SE.detach().clone()
        elif bias_E is None:
            rank0_SE = rest_SE = logits_SE.detach().clone()
        else:
            rank0_SE = rest_SE = scores_SE.detach() + bias_E.float()
        chosen = []
        for r in range(k):
            if r == 0:
                e_S = rank0_SE.argmax(dim=-1)
            elif r == 1 and use_policy and policy == "sampling":
                u = torch.rand(S, E, generator=generator, device=logits_SE.device)
                gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
                noisy = logits_SE.detach() + gumbel
                noisy.scatter_(1, chosen[0][:, None], float("-inf"))
                e_S = noisy.argmax(dim=-1)
            else:
                e_S = rest_SE.argmax(dim=-1)
            chosen.append(e_S)
            rest_SE.scatter_(1, e_S[:, None], float("-inf"))
        expert_SK = torch.stack(chosen, dim=1)

    gate_SK = scores_SE.gather(1, expert_SK)

    with torch.no_grad():
        offered_SK = torch.ones(S, k, dtype=torch.bool, device=logits_SE.device)
        if use_policy and policy == "random":
            u = torch.rand(S, generator=generator, device=logits_SE.device)
            offered_SK[:, 1] = 2.0 * gate_SK[:, 1].detach() > u
        # Priority order is rank-major: all rank-0 assignments in token order, then rank 1, ...
        expert_A = torch.where(offered_SK, expert_SK, E).t().reshape(-1)
        pos_A, _ = _queue_positions(expert_A, E)
        slot_SK = pos_A.view(k, S).t().contiguous()
        slot_SK = torch.where(offered_SK, slot_SK, -1)
        kept_SK = offered_SK if capacity is None else offered_SK & (slot_SK < capacity)

    weights_SK = gate_SK * kept_SK
    if not (k >= 2 if norm_topk is None else norm_topk):
        combine_SK = weights_SK
    else:
        denom_S1 = weights_SK.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).eps)
        combine_SK = weights_SK / denom_S1
    if route_scale != 1.0:
        combine_SK = combine_SK * route_scale

    top1_E = _bincount(expert_SK[:, 0], E)
    if seq_len is not None:  # the loss per sequence, averaged over the sequences
        n_seq = S // seq_len
        me_NE = probs_SE.view(n_seq, seq_len, E).mean(dim=1)
        seq_N = torch.arange(n_seq, device=logits_SE.device).repeat_interleave(seq_len)
        ce_NE = _bincount(seq_N * E + expert_SK[:, 0], n_seq * E).view(n_seq, E).float()
        aux_loss = E * (me_NE * ce_NE / seq_len).sum(dim=1).mean()
    else:
        me_E = probs_SE.mean(dim=0)
        ce_E = top1_E.float() / max(S, 1)
        aux_loss = E * (me_E * ce_E).sum()
    z_loss = torch.logsumexp(logits_SE, dim=-1).square().mean()
    return Routing(
        expert_SK=expert_SK,
        slot_SK=slot_SK,
        kept_SK=kept_SK,
        offered_SK=offered_SK,
        combine_SK=combine_SK,
        probs_SE=probs_SE,
        capacity=capacity,
        aux_loss=aux_loss,
        z_loss=z_loss,
        top1_counts_E=top1_E,
        all_kept=capacity is None and not (use_policy and policy == "random"),
    )


def global_batch_loss(routing: Routing, counts_E: torch.Tensor) -> torch.Tensor:
    """The balancing loss with ce from ``counts_E``, rank-0 counts over the whole batch (every
    micro-batch and rank; Qiu et al. 2025), me from this call's tokens: averaged over equal
    micro-batches it is the loss of the concatenated batch, value and gradient."""
    me_E = routing.probs_SE.mean(dim=0)
    ce_E = counts_E.float() / counts_E.sum().clamp_min(1).float()
    return routing.n_experts * (me_E * ce_E).sum()


@dataclass
class DispatchPlan:
    """Assignments sorted by expert, slot order within an expert.

    ``token_N``: source token of each of the N rows; ``combine_N``: its weight; ``counts_E``:
    kept assignments per expert (expert e owns a contiguous run of length counts_E[e]), on the
    device. ``padded``: rows past ``sum(counts_E)`` exist (dropped assignments, weight 0);
    :meth:`kept` removes them.
    """

    token_N: torch.Tensor
    combine_N: torch.Tensor
    counts_E: torch.Tensor
    padded: bool
    host_counts: list[int] | None = None

    @property
    def counts(self) -> list[int]:
        """``counts_E`` as a Python list (a host sync the first time)."""
        if self.host_counts is None:
            self.host_counts = self.counts_E.tolist()
        return self.host_counts

    def kept(self) -> DispatchPlan:
        """The plan without the rows of dropped assignments: N = sum(counts). Reads the counts
        on the host (one sync): the loop kernel and the uneven all-to-all need them there."""
        counts = self.counts
        n = sum(counts)
        return DispatchPlan(
            self.token_N[:n], self.combine_N[:n], self.counts_E, padded=False, host_counts=counts
        )


def plan_dispatch(routing: Routing) -> DispatchPlan:
    """All S*K assignments sorted by expert, the dropped ones last (the same order as before
    and shapes fixed by S and K: no host sync)."""
    S, K = routing.expert_SK.shape
    E = routing.n_experts
    expert_A = torch.where(routing.kept_SK, routing.expert_SK, E).t().reshape(-1)
    sorted_A, order_A = torch.sort(expert_A, stable=True)
    counts_E = _bincount(sorted_A, E + 1)[:E]
    return DispatchPlan(
        token_N=order_A % S,
        combine_N=routing.combine_SK.t().reshape(-1)[order_A],
        counts_E=counts_E,
        padded=not routing.all_kept,
    )


def combine(y_ND: torch.Tensor, plan: DispatchPlan, n_tokens: int) -> torch.Tensor:
    """Sum each token's weighted expert outputs: (N, D) -> (S, D). Tokens with no kept
    assignment get zeros (the block's residual carries them)."""
    weighted_ND = y_ND * plan.combine_N[:, None].to(y_ND.dtype)
    out_SD = y_ND.new_zeros(n_tokens, y_ND.shape[1])
    return out_SD.index_add(0, plan.token_N, weighted_ND)


class Experts(nn.Module):
    """E expert FFNs with stacked weights (shard by expert along dim 0).

    paper: ``w1`` (E, D, F), ``b1`` (E, F), ``w2`` (E, F, D), ``b2`` (E, D);
    y = gelu(x w1 + b1) w2 + b2.
    modern: ``w1``, ``w3`` (E, D, F), ``w2`` (E, F, D); y = (silu(x w1) * x w3) w2.
    Note the (in, out) layout: the transpose of nn.Linear's weight.
    """

    def __init__(
        self, n_experts: int, d_model: int, d_ffn: int, arch: str, activation_dropout: float
    ):
        super().__init__()
        self.arch = arch
        self.activation_dropout = activation_dropout
        # "auto" | "loop" | "grouped_mm": see moelab.model.grouped.use_grouped_mm. Not part of
        # the state: the kernels compute the same function.
        self.kernel = "auto"
        E, D, Fd = n_experts, d_model, d_ffn
        self.w1 = nn.Parameter(torch.empty(E, D, Fd))
        self.w2 = nn.Parameter(torch.empty(E, Fd, D))
        if arch == "paper":
            self.b1 = nn.Parameter(torch.zeros(E, Fd))
            self.b2 = nn.Parameter(torch.zeros(E, D))
        else:
            self.w3 = nn.Parameter(torch.empty(E, D, Fd))

    def uses_grouped_mm(self, x: torch.Tensor) -> bool:
        """Whether a call on inputs like ``x`` runs ``torch._grouped_mm`` (else the loop)."""
        E, D, Fd = self.w1.shape
        return use_grouped_mm(self.kernel, compute_dtype(x, self.w1), x.device, (D, Fd))

    def forward(
        self, x_ND: torch.Tensor, counts: list[int] | torch.Tensor, padded: bool = False
    ) -> torch.Tensor:
        """Run expert e on rows [sum(counts[:e]), sum(counts[:e+1])) of ``x_ND``.

        ``counts``: a list (host) or a tensor on x's device; ``padded``: rows past sum(counts)
        may follow (grouped_mm only: they give zeros). The grouped_mm kernel
        (:meth:`uses_grouped_mm`) takes the counts as they are; the loop reads a tensor's on the
        host.

        The stacked weights are never indexed per expert in autograd (``w[e]`` in a loop would
        make backward allocate a full-size gradient per expert, O(E^2 D F)):
        :func:`grouped_ffn` runs all experts in one autograd node, block by block, writing
        gradients straight into stacked buffers. With activation dropout in training the
        projections run as separate :func:`grouped_linear` nodes instead.
        """
        paper = self.arch == "paper"
        # (w1, b1, w2, b2, w3): the paper FFN has biases and no gate w3, the modern the reverse
        weights = (
            self.w1,
            self.b1 if paper else None,
            self.w2,
            self.b2 if paper else None,
            None if paper else self.w3,
        )
        if self.uses_grouped_mm(x_ND):
            if not isinstance(counts, torch.Tensor):
                counts = torch.tensor(counts, device=x_ND.device)
            return grouped_mm_ffn(
                x_ND,
                *weights,
                counts,
                padded=padded,
                dropout=self.activation_dropout if self.training else 0.0,
            )
        if isinstance(counts, torch.Tensor):
            counts = counts.tolist()
        if padded and sum(counts) != x_ND.shape[0]:
            raise ValueError("the loop kernel needs the rows of dropped assignments removed")
        if not (self.training and self.activation_dropout > 0):
            return grouped_ffn(x_ND, *weights, counts)
        if paper:
            h_NF = F.gelu(grouped_linear(x_ND, self.w1, self.b1, counts))
        else:
            h_NF = F.silu(grouped_linear(x_ND, self.w1, None, counts))
            h_NF = h_NF * grouped_linear(x_ND, self.w3, None, counts)
        h_NF = F.dropout(h_NF, self.activation_dropout, self.training)
        return grouped_linear(h_NF, self.w2, self.b2 if paper else None, counts)


@dataclass
class MoeOutput:
    y_BTD: torch.Tensor
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    stats: MoeStats | None


def _recomputing() -> bool:
    """Whether this forward runs inside backward: activation checkpointing's recomputation, whose
    routing was already counted. Asked only when bias balancing counts (the query is a graph
    break for torch.compile, so a compiled graph never asks: under compile the recomputation is
    the compiler's own and does not rerun this Python)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class MoeFFN(nn.Module):
    """The MoE replacement of a block's FFN: ``gate`` (nn.Linear D -> E, no bias, weight (E, D))
    and ``experts`` (:class:`Experts` of width ``cfg.expert_width``); with
    ``cfg.n_shared_experts`` also ``shared`` (one :class:`FeedForward` of width
    n_shared * expert_width, run on every token and added) and, with ``shared_expert_gate``,
    ``shared_gate`` (nn.Linear D -> 1, no bias: the shared output times its sigmoid). With
    ``balance == "bias"`` the float32 buffer ``score_bias`` (E,) is added to the scores for the
    choice of experts (see :func:`moelab.model.balance.update_balance_bias`).

    Capacity factor: ``cfg.capacity_factor`` in train mode, ``cfg.eval_capacity_factor`` in
    eval mode (None = dropless).

    ``exchange``: how the gathered tokens reach the experts and come back. None (one process):
    ``experts`` runs them here. Expert parallelism sets a module that sends them to the ranks
    holding their experts and returns the outputs (``exchange(x_ND, plan, capacity, experts)``
    -> ``y_ND`` in plan order); routing, dispatch plan and combine stay this class's.
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        if cfg.second_expert_policy != "all" and cfg.top_k != 2:
            raise MoelabError(
                f"model.second_expert_policy={cfg.second_expert_policy!r} needs top_k = 2 "
                f"(got {cfg.top_k}); use 'all'"
            )
        self.layer = layer
        self.n_experts = cfg.n_experts
        self.top_k = cfg.top_k
        self.cfg = cfg  # routing and balancing settings
        # per layer: validation and evaluation change them (moelab.train.validation)
        self.capacity_factor = cfg.capacity_factor
        self.eval_capacity_factor = cfg.eval_capacity_factor
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = Experts(
            cfg.n_experts, cfg.d_model, cfg.expert_width, cfg.arch, cfg.activation_dropout
        )
        self.shared = None
        self.shared_gate = None
        if cfg.n_shared_experts:
            self.shared = FeedForward(cfg, width=cfg.n_shared_experts * cfg.expert_width)
            if cfg.shared_expert_gate:
                self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False)
        if cfg.balance == "bias":
            # State (saved in checkpoints), not a parameter: moved by update_balance_bias only.
            self.register_buffer("score_bias", torch.zeros(cfg.n_experts))
            # Assignments per expert since the last bias update (this rank; not saved).
            self.register_buffer(
                "load_E", torch.zeros(cfg.n_experts, dtype=torch.int64), persistent=False
            )
        else:
            self.score_bias = None
        # Global-batch scope: the step's rank-0 counts over every micro-batch and rank, set by
        # moelab.model.balance.global_batch_counts; None: this micro-batch's, summed over ranks.
        self.balance_counts_E: torch.Tensor | None = None
        self.balance_group = None  # process group of the global batch; None: the default one
        self.top1_sum_E: torch.Tensor | None = None  # global_batch_counts' accumulator
        self.exchange: nn.Module | None = None

    def router_logits(self, x_SD: torch.Tensor) -> torch.Tensor:
        # The router runs in float32 even under autocast (fairseq keeps wg in fp32): routing
        # decisions are discontinuous and bf16 rounding flips near-ties.
        with torch.autocast(device_type=x_SD.device.type, enabled=False):
            return F.linear(x_SD.float(), self.gate.weight.float())

    def route(self, x_SD: torch.Tensor, seq_len: int) -> Routing:
        """Route the S tokens of ``x_SD`` (sequences of ``seq_len``) with this layer's settings."""
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = expert_capacity(x_SD.shape[0], self.n_experts, self.top_k, cf)
        routing = route(
            self.router_logits(x_SD),
            self.top_k,
            capacity,
            self.cfg.second_expert_policy,
            training=self.training,
            score=self.cfg.router_score,
            norm_topk=self.cfg.norm_topk,
            route_scale=self.cfg.route_scale,
            bias_E=self.score_bias,
            seq_len=seq_len if self.cfg.balance_scope == "sequence" else None,
        )
        if self.cfg.balance == "bias" and self.training and not _recomputing():
            with torch.no_grad():
                offered = torch.where(routing.offered_SK, routing.expert_SK, self.n_experts)
                self.load_E += _bincount(offered, self.n_experts + 1)[: self.n_experts]
        return routing

    def _global_counts(self, routing: Routing) -> torch.Tensor:
        """The step's rank-0 counts: given by global_batch_counts (several micro-batches), else
        this micro-batch's summed over the ranks (exact without accumulation)."""
        if self.balance_counts_E is not None:
            return self.balance_counts_E
        counts = routing.top1_counts_E.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, group=self.balance_group)
        return counts

    def forward(self, x_BTD: torch.Tensor, stats: bool = True) -> MoeOutput:
        B, T, D = x_BTD.shape
        x_SD = x_BTD.reshape(B * T, D)
        routing = self.route(x_SD, T)
        if self.top1_sum_E is not None:  # global_batch_counts' pass: count (and run as usual)
            self.top1_sum_E += routing.top1_counts_E
        elif self.cfg.balance_scope == "global_batch" and self.training:
            routing.aux_loss = global_batch_loss(routing, self._global_counts(routing))
        plan = plan_dispatch(routing)
        if self.exchange is None and self.experts.uses_grouped_mm(x_SD):
            y_ND = self.experts(x_SD.index_select(0, plan.token_N), plan.counts_E, plan.padded)
        else:
            # The loop and the uneven all-to-all need the counts on the host: one sync.
            plan = plan.kept()
            x_ND = x_SD.index_select(0, plan.token_N)
            if self.exchange is None:
                y_ND = self.experts(x_ND, plan.counts)
            else:
                y_ND = self.exchange(x_ND, plan, routing.capacity, self.experts)
        y_SD = combine(y_ND, plan, B * T)
        if self.shared is not None:
            shared_SD = self.shared(x_SD)
            if self.shared_gate is not None:
                shared_SD = torch.sigmoid(self.shared_gate(x_SD)) * shared_SD
            y_SD = y_SD + shared_SD
        aux_loss = routing.aux_loss
        if self.cfg.balance != "loss":  # "bias" / "none": telemetry only, no loss term
            aux_loss = torch.zeros_like(aux_loss)
        return MoeOutput(
            y_BTD=y_SD.view(B, T, D),
            aux_loss=aux_loss,
            z_loss=routing.z_loss,
            stats=routing.stats(self.layer) if stats else None,
        )
