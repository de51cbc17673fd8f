"""Capacity planning on paper (``moelab plan``): memory per GPU and step time of a preset on a
cluster shape, and which layouts fit, before any GPU is rented. docs/plan.md is the one account
of the method (moelab's layout, bytes per part, activations after Korthikanti et al. 2022, the
step time from PaLM FLOPs, what it leaves out) and works the paper's four MoE models through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.flops import block_dense_params, count_params, palm_flops_per_token

GIB = 1024**3
RESERVE = 0.10  # of GPU memory kept for the CUDA context, NCCL buffers and fragmentation


@dataclass(frozen=True)
class Cluster:
    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0
    peak_tflops: float = 312.0  # A100 dense bf16

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gib * GIB * (1 - RESERVE)


@dataclass(frozen=True)
class Layout:
    ep: int  # expert-parallel degree (1 for a dense model)
    micro_batch: int  # sequences per GPU per micro-step
    seq_len: int
    # As the run config's parallel.activation_checkpointing: each block keeps only its input
    # and is recomputed in backward (moelab.parallel.checkpointing).
    activation_checkpointing: bool = True
    grad_accum: int = 1
    bf16: bool = True  # compute dtype of activations, buffers and FSDP's working copy


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    all_to_all: float

    @property
    def total(self) -> float:
        states = self.parameters + self.gradients + self.optimizer
        return states + self.activations + self.all_to_all


def valid_eps(cfg: ModelConfig, world: int) -> list[int]:
    """Expert-parallel degrees this model allows on ``world`` GPUs (divisors of both)."""
    if not cfg.is_moe:
        return [1]
    g = math.gcd(world, cfg.n_experts)
    return [d for d in range(1, g + 1) if g % d == 0]


def check(cfg: ModelConfig, cluster: Cluster, layout: Layout, mfu: float) -> None:
    """One line for any input the estimate cannot be made for."""
    for name, v in (
        ("--nodes", cluster.nodes),
        ("--gpus-per-node", cluster.gpus_per_node),
        ("--micro-batch", layout.micro_batch),
        ("--seq-len", layout.seq_len),
        ("--grad-accum", layout.grad_accum),
        ("--ep", layout.ep),
    ):
        if v < 1:
            raise MoelabError(f"{name}: must be >= 1, got {v}")
    positive = (("--gpu-memory", cluster.gpu_memory_gib), ("--peak-tflops", cluster.peak_tflops))
    for name, x in positive:
        if not (x > 0 and math.isfinite(x)):
            raise MoelabError(f"{name}: must be a positive number, got {x}")
    if not 0 < mfu <= 1:
        raise MoelabError(f"--mfu: must be in (0, 1], got {mfu}")
    if not cfg.is_moe and layout.ep != 1:
        raise MoelabError(f"--ep {layout.ep}: {cfg.name} is dense (no experts); use --ep 1")
    if cfg.is_moe and cfg.n_experts % layout.ep:
        raise MoelabError(
            f"--ep {layout.ep}: does not divide {cfg.name}'s {cfg.n_experts} experts "
            f"(possible here: {', '.join(map(str, valid_eps(cfg, cluster.world)))})"
        )
    if cluster.world % layout.ep:
        raise MoelabError(f"--ep {layout.ep}: does not divide the {cluster.world} GPUs")


def _ffn_act_per_token(cfg: ModelConfig, f: int) -> int:
    h = cfg.d_model
    return 2 * h + 6 * f if cfg.arch == "modern" else 3 * h + 4 * f


def expert_slots(cfg: ModelConfig, tokens: int) -> int:
    """Token slots all experts of one MoE layer process for ``tokens`` local tokens: ``E * C``
    in capacity mode (the paper's), ``k * tokens`` dropless."""
    if cfg.capacity_factor is None:
        return cfg.top_k * tokens
    per_expert = math.ceil(tokens / cfg.n_experts)
    return cfg.n_experts * math.ceil(cfg.capacity_factor * cfg.top_k * per_expert)


def estimate_memory(cfg: ModelConfig, cluster: Cluster, layout: Layout) -> Memory:
    counts = count_params(cfg)
    local = local_params(cfg, cluster, layout)
    cbytes = 2 if layout.bf16 else 4
    moe_ids = set(cfg.moe_layer_ids())
    blocks = [block_dense_params(cfg, i in moe_ids) for i in range(cfg.n_layers)]
    working = cbytes * (counts.embedding + 2 * max(blocks))

    h = cfg.d_model
    tokens = layout.micro_batch * layout.seq_len
    slots = expert_slots(cfg, tokens) if cfg.is_moe else 0
    scale = 1 if layout.bf16 else 2
    per_layer = []
    shared = cfg.n_shared_experts * cfg.expert_width  # every token also goes through it
    for i in range(cfg.n_layers):
        if i in moe_ids:
            ffn = _ffn_act_per_token(cfg, cfg.expert_width) * slots
            ffn += _ffn_act_per_token(cfg, shared) * tokens if shared else 0
        else:
            ffn = _ffn_act_per_token(cfg, cfg.d_ffn) * tokens
        per_layer.append(scale * (15 * h * tokens + ffn))
    if layout.activation_checkpointing:
        activations = scale * 2 * h * tokens * cfg.n_layers + max(per_layer)
    else:
        activations = sum(per_layer)
    a2a = 4 * slots * h * cbytes if cfg.is_moe else 0
    return Memory(
        parameters=4 * local + working,
        gradients=4 * local,
        optimizer=8 * local,
        activations=float(activations),
        all_to_all=float(a2a),
    )


def local_params(cfg: ModelConfig, cluster: Cluster, layout: Layout) -> float:
    # dense model: FSDP over all ranks; MoE: the dense parameters FSDP over the expert group
    # (replicated over its copies), the experts E/ep per rank
    return count_params(cfg).total / (layout.ep if cfg.is_moe else cluster.world)


def step_tokens(cluster: Cluster, layout: Layout) -> int:
    return layout.micro_batch * layout.seq_len * cluster.world * layout.grad_accum


def step_seconds(cfg: ModelConfig, cluster: Cluster, layout: Layout, mfu: float) -> float:
    flops = palm_flops_per_token(cfg, layout.seq_len) * step_tokens(cluster, layout)
    return flops / (cluster.world * cluster.peak_tflops * 1e12 * mfu)


def layouts(cfg: ModelConfig, cluster: Cluster, layout: Layout) -> list[tuple[Layout, Memory]]:
    """Every EP degree with and without activation checkpointing, the rest as given."""
    out = []
    for ep in valid_eps(cfg, cluster.world):
        for ckpt in (False, True):
            lay = replace(layout, ep=ep, activation_checkpointing=ckpt)
            out.append((lay, estimate_memory(cfg, cluster, lay)))
    return out


def _g(b: float) -> str:
    return f"{b / GIB:8.2f}"


def _human_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def report(
    cfg: ModelConfig, cluster: Cluster, layout: Layout, mfu: float, tokens: float | None
) -> str:
    """The text ``moelab plan`` prints."""
    check(cfg, cluster, layout, mfu)
    mem = estimate_memory(cfg, cluster, layout)
    counts = count_params(cfg)
    usable = cluster.usable_bytes
    experts = (
        f", EP {layout.ep} ({cfg.n_experts // layout.ep} experts per GPU, "
        f"{cluster.world // layout.ep} cop{'y' if cluster.world == layout.ep else 'ies'} of each)"
        if cfg.is_moe
        else ", FSDP over all GPUs"
    )
    lines = [
        f"{cfg.name} ({counts.total / 1e9:.4g}B parameters, {counts.active / 1e9:.4g}B active) "
        f"on {cluster.nodes} x {cluster.gpus_per_node} GPUs ({cluster.world}, "
        f"{cluster.gpu_memory_gib:g} GiB each){experts}",
        f"micro-batch {layout.micro_batch} x {layout.seq_len} tokens per GPU, activation "
        f"checkpointing {'on' if layout.activation_checkpointing else 'off'}, "
        f"{'bf16' if layout.bf16 else 'fp32'} compute, fp32 weights and AdamW",
        "",
        "memory per GPU           GiB",
        f"  parameters         {_g(mem.parameters)}   "
        f"({local_params(cfg, cluster, layout) / 1e9:.4g}B local in fp32 + working copy)",
        f"  gradients          {_g(mem.gradients)}",
        f"  optimizer (AdamW)  {_g(mem.optimizer)}",
        f"  activations        {_g(mem.activations)}",
        f"  all-to-all buffers {_g(mem.all_to_all)}",
        f"  total              {_g(mem.total)}   of {usable / GIB:.1f} usable "
        f"({cluster.gpu_memory_gib:g} GiB less {RESERVE:.0%}): "
        + ("fits" if mem.total <= usable else "does NOT fit"),
        "",
    ]
    st = step_seconds(cfg, cluster, layout, mfu)
    n = step_tokens(cluster, layout)
    line = (
        f"step: {n:,} tokens x {palm_flops_per_token(cfg, layout.seq_len) / 1e9:.4g} GFLOPs "
        f"(PaLM) at {mfu:.0%} MFU of {cluster.peak_tflops:g} TFLOP/s per GPU: {st:.3g} s"
    )
    if tokens:
        total_s = st * tokens / n
        line += f"; {tokens:.3g} tokens: {math.ceil(tokens / n):,} steps, {_human_time(total_s)}"
    lines += [
        line,
        "",
        "layouts on this cluster (GiB per GPU; the rest as above):",
        "     ep   no checkpointing    checkpointing",
    ]
    rows = layouts(cfg, cluster, layout)
    for off, on in zip(rows[::2], rows[1::2]):
        cells = [f"{_g(m.total)} {'fits' if m.total <= usable else 'no  '}" for _, m in (off, on)]
        mark = "   <- this one" if layout.ep == off[0].ep else ""
        lines.append(f"  {off[0].ep:>5}  {cells[0]:>16}  {cells[1]:>15}{mark}")
    return "\n".join(line.rstrip() for line in lines)
