"""Expert FFNs over rows grouped by expert (``counts[e]`` consecutive rows for expert e): two
kernels, **loop** (:func:`grouped_ffn`, :func:`grouped_linear`: one autograd node looping over
the experts with the counts on the host, writing outputs and stacked gradients straight into
one buffer each; the CPU default, today's numbers come from it) and **grouped_mm**
(:func:`grouped_mm_ffn`: ``torch._grouped_mm`` from per-expert offsets that stay on the device,
no host sync). docs/model.md (*Expert kernels*) is the one account of what each saves, which
one :func:`use_grouped_mm` picks and how closely they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("auto", "loop", "grouped_mm")
# torch._grouped_mm reads rows through TMA/vector loads: every row stride must be a multiple of
# 16 bytes (checked by the op on CPU too), and it takes no other dtypes.
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype the experts run in: the autocast dtype if autocast is on, else the promotion
    of the input and weight dtypes."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, w.dtype)


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_NI, w_EIO, b_EO, counts):  # noqa: D102
        ctx.counts = counts
        ctx.save_for_backward(x_NI, w_EIO)
        y_NO = x_NI.new_empty(x_NI.shape[0], w_EIO.shape[2])
        start = 0
        with torch.autocast(device_type=x_NI.device.type, enabled=False):
            for e, n in enumerate(counts):
                if n == 0:
                    continue
                rows = slice(start, start + n)
                if b_EO is not None:
                    torch.addmm(b_EO[e], x_NI[rows], w_EIO[e], out=y_NO[rows])
                else:
                    torch.mm(x_NI[rows], w_EIO[e], out=y_NO[rows])
                start += n
        return y_NO

    @staticmethod
    def backward(ctx, gy_NO):  # noqa: D102
        x_NI, w_EIO = ctx.saved_tensors
        counts = ctx.counts
        gy_NO = gy_NO.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx_NI = torch.empty_like(x_NI) if need_x else None
        gw_EIO = torch.empty_like(w_EIO) if need_w else None
        gb_EO = w_EIO.new_empty(w_EIO.shape[0], w_EIO.shape[2]) if need_b else None
        start = 0
        with torch.autocast(device_type=x_NI.device.type, enabled=False):
            for e, n in enumerate(counts):
                rows = slice(start, start + n)
                if n == 0:
                    for g in (gw_EIO, gb_EO):
                        if g is not None:
                            g[e].zero_()
                    continue
                gy = gy_NO[rows]
                if gx_NI is not None:
                    torch.mm(gy, w_EIO[e].t(), out=gx_NI[rows])
                if gw_EIO is not None:
                    torch.mm(x_NI[rows].t(), gy, out=gw_EIO[e])
                if gb_EO is not None:
                    torch.sum(gy, dim=0, out=gb_EO[e])
                start += n
        return gx_NI, gw_EIO, gb_EO, None


def grouped_linear(
    x_NI: torch.Tensor, w_EIO: torch.Tensor, b_EO: torch.Tensor | None, counts: list[int]
) -> torch.Tensor:
    """``y[rows of e] = x[rows of e] @ w_EIO[e] (+ b_EO[e])`` with rows grouped by ``counts``.

    Under autocast the inputs are cast to the autocast dtype first (like ``F.linear`` would);
    the gradient of the cast carries back to float32 master weights.
    """
    if sum(counts) != x_NI.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but x has {x_NI.shape[0]} rows")
    dtype = compute_dtype(x_NI, w_EIO)
    b_EO = b_EO.to(dtype) if b_EO is not None else None
    return _GroupedLinear.apply(
        x_NI.to(dtype).contiguous(), w_EIO.to(dtype).contiguous(), b_EO, counts
    )


class _GroupedFFN(torch.autograd.Function):
    """All experts' FFNs in one node, one expert block at a time: fc1 -> activation -> fc2 runs
    while the block's (n, F) activations are still in cache; it saves what autograd would
    (input, pre-activations, activation) and nothing more."""

    @staticmethod
    def forward(ctx, x_ND, w1_EDF, b1_EF, w2_EFD, b2_ED, w3_EDF, counts, kind):  # noqa: D102
        N, D = x_ND.shape
        Fd = w1_EDF.shape[2]
        y_ND = x_ND.new_empty(N, D)
        a1_NF = x_ND.new_empty(N, Fd)
        a3_NF = x_ND.new_empty(N, Fd) if kind == "swiglu" else None
        h_NF = x_ND.new_empty(N, Fd)
        start = 0
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            for e, n in enumerate(counts):
                if n == 0:
                    continue
                rows = slice(start, start + n)
                x = x_ND[rows]
                if b1_EF is not None:
                    torch.addmm(b1_EF[e], x, w1_EDF[e], out=a1_NF[rows])
                else:
                    torch.mm(x, w1_EDF[e], out=a1_NF[rows])
                a3 = None
                if a3_NF is not None:
                    a3 = torch.mm(x, w3_EDF[e], out=a3_NF[rows])
                h = h_NF[rows]
                if kind == "gelu":
                    torch.nn.functional.gelu(a1_NF[rows], out=h)
                else:
                    torch.mul(torch.nn.functional.silu(a1_NF[rows]), a3, out=h)
                if b2_ED is not None:
                    torch.addmm(b2_ED[e], h, w2_EFD[e], out=y_ND[rows])
                else:
                    torch.mm(h, w2_EFD[e], out=y_ND[rows])
                start += n
        ctx.counts, ctx.kind = counts, kind
        ctx.has_b1, ctx.has_b2 = b1_EF is not None, b2_ED is not None
        ctx.save_for_backward(x_ND, w1_EDF, w2_EFD, w3_EDF, a1_NF, a3_NF, h_NF)
        return y_ND

    @staticmethod
    def backward(ctx, gy_ND):  # noqa: D102
        x_ND, w1, w2, w3, a1_NF, a3_NF, h_NF = ctx.saved_tensors
        counts, kind = ctx.counts, ctx.kind
        gy_ND = gy_ND.contiguous()
        E, D, Fd = w1.shape
        gx = torch.empty_like(x_ND)
        gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
        gb1 = w1.new_empty(E, Fd) if ctx.has_b1 else None
        gb2 = w1.new_empty(E, D) if ctx.has_b2 else None
        gw3 = torch.empty_like(w3) if w3 is not None else None
        start = 0
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            for e, n in enumerate(counts):
                if n == 0:
                    for g in (gw1, gw2, gb1, gb2, gw3):
                        if g is not None:
                            g[e].zero_()
                    continue
                rows = slice(start, start + n)
                x, gy, a1 = x_ND[rows], gy_ND[rows], a1_NF[rows]
                a3 = a3_NF[rows] if a3_NF is not None else None
                h = h_NF[rows]
                torch.mm(h.t(), gy, out=gw2[e])
                if gb2 is not None:
                    torch.sum(gy, dim=0, out=gb2[e])
                gh = gy @ w2[e].t()
                if kind == "gelu":
                    ga1 = torch.ops.aten.gelu_backward(gh, a1)
                else:
                    ga3 = gh * torch.nn.functional.silu(a1)
                    ga1 = torch.ops.aten.silu_backward(gh * a3, a1)
                    torch.mm(x.t(), ga3, out=gw3[e])
                torch.mm(x.t(), ga1, out=gw1[e])
                if gb1 is not None:
                    torch.sum(ga1, dim=0, out=gb1[e])
                torch.mm(ga1, w1[e].t(), out=gx[rows])
                if kind != "gelu":
                    gx[rows].addmm_(ga3, w3[e].t())
                start += n
        return gx, gw1, gb1, gw2, gb2, gw3, None, None


def grouped_ffn(
    x_ND: torch.Tensor,
    w1_EDF: torch.Tensor,
    b1_EF: torch.Tensor | None,
    w2_EFD: torch.Tensor,
    b2_ED: torch.Tensor | None,
    w3_EDF: torch.Tensor | None,
    counts: list[int],
) -> torch.Tensor:
    """Expert FFNs on rows grouped by ``counts``: ``gelu(x w1 + b1) w2 + b2`` when ``w3`` is
    None (paper), else ``(silu(x w1) * (x w3)) w2`` (modern, no biases). No activation dropout:
    use :func:`grouped_linear` for that."""
    if sum(counts) != x_ND.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but x has {x_ND.shape[0]} rows")
    dtype = compute_dtype(x_ND, w1_EDF)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    kind = "gelu" if w3_EDF is None else "swiglu"
    return _GroupedFFN.apply(
        cast(x_ND), cast(w1_EDF), cast(b1_EF), cast(w2_EFD), cast(b2_ED), cast(w3_EDF), counts, kind
    )


def grouped_mm_supported(dtype: torch.dtype, device: torch.device, widths: tuple[int, ...]) -> bool:
    """Whether ``torch._grouped_mm`` can run experts of these row widths (D, F) at all."""
    if not hasattr(torch, "_grouped_mm") or dtype not in _GROUPED_MM_DTYPES:
        return False
    if any(w * dtype.itemsize % 16 for w in widths):
        return False
    # Under torch.compile the op is traced through its meta kernel, which (torch 2.13) accepts
    # bf16 only, on any device.
    return dtype == torch.bfloat16 or not torch.compiler.is_compiling()


def use_grouped_mm(
    kernel: str, dtype: torch.dtype, device: torch.device, widths: tuple[int, ...]
) -> bool:
    """Which kernel runs the experts: ``loop`` -> False; ``grouped_mm`` -> True (ValueError if
    the op cannot run this dtype/width); ``auto`` -> grouped_mm where it is one sync-free
    kernel (bf16 on sm90/sm100 CUDA, whose CUTLASS path keeps the offsets on the device; other
    CUDA devices fall back inside the op to a loop that copies the offsets to the host) and
    under torch.compile in bf16 (the loop's host counts would break the graph); the loop
    everywhere else, in particular CPU eager, where the README's study numbers come from it
    (``benchmarks/moe_layer.py`` compares the two)."""
    if kernel not in KERNELS:
        raise ValueError(f"expert kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "loop":
        return False
    supported = grouped_mm_supported(dtype, device, widths)
    if kernel == "grouped_mm":
        if not supported:
            raise ValueError(
                f"torch._grouped_mm cannot run {dtype} experts of widths {widths} here "
                "(fp32/bf16/fp16, every width a multiple of 16 bytes, bf16 under torch.compile)"
            )
        return True
    if not supported or dtype != torch.bfloat16:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] in (9, 10)
    return torch.compiler.is_compiling()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: torch._grouped_mm's backward
    (torch 2.13) rejects a broadcast one (stride 0), as ``y.sum().backward()`` produces."""

    @staticmethod
    def forward(ctx, y):  # noqa: D102
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return g.contiguous()


def _per_row(b_EO: torch.Tensor, expert_N: torch.Tensor) -> torch.Tensor:
    """Row n's expert's bias; rows past the last group (expert index E) get a zero row, which
    also takes their (meaningless) bias gradient away from the real experts."""
    return F.pad(b_EO, (0, 0, 0, 1)).index_select(0, expert_N)


def grouped_mm_ffn(
    x_ND: torch.Tensor,
    w1_EDF: torch.Tensor,
    b1_EF: torch.Tensor | None,
    w2_EFD: torch.Tensor,
    b2_ED: torch.Tensor | None,
    w3_EDF: torch.Tensor | None,
    counts_E: torch.Tensor,
    *,
    padded: bool,
    dropout: float = 0.0,
) -> torch.Tensor:
    """:func:`grouped_ffn`'s maths with ``torch._grouped_mm``: rows grouped by ``counts_E`` (a
    tensor on x's device, never read on the host). ``padded``: rows past ``sum(counts_E)``
    may exist (dropped assignments); they get zeros. The op leaves such rows of its outputs
    (forward, and the input gradient in backward) unwritten, so x is masked before (its
    backward then zeroes their input gradient) and y after; intermediate rows past the groups
    only ever reach the next grouped_mm, which does not read them. ``dropout`` is activation
    dropout (pass 0 outside training)."""
    N, D = x_ND.shape
    E = w1_EDF.shape[0]
    dtype = compute_dtype(x_ND, w1_EDF)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    x, w1, b1, w2, b2, w3 = map(cast, (x_ND, w1_EDF, b1_EF, w2_EFD, b2_ED, w3_EDF))
    offs_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
    expert_N = rest_N1 = None
    if padded or b1 is not None:
        rows = torch.arange(N, device=x.device, dtype=torch.int32)
        expert_N = torch.searchsorted(offs_E, rows, right=True)  # E past the last group
    if padded:
        rest_N1 = (expert_N == E)[:, None]
        x = x.masked_fill(rest_N1, 0)
    with torch.autocast(device_type=x.device.type, enabled=False):
        a1 = torch._grouped_mm(x, w1, offs=offs_E)
        if b1 is not None:
            a1 = a1 + _per_row(b1, expert_N)
        if w3 is None:
            h = F.gelu(a1)
        else:
            h = F.silu(a1) * torch._grouped_mm(x, w3, offs=offs_E)
        if dropout > 0:
            h = F.dropout(h, dropout, True)
        y = torch._grouped_mm(h, w2, offs=offs_E)
        if b2 is not None:
            y = y + _per_row(b2, expert_N)
    y = _ContiguousGrad.apply(y)
    return y if rest_N1 is None else y.masked_fill(rest_N1, 0)
