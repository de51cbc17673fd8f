"""Differentiable collectives for expert parallelism (thin autograd wrappers over torch's own).

- :func:`all_to_all` exchanges rows with (possibly uneven) split sizes; its backward is the
  reverse exchange with the splits swapped.
- :func:`expert_grad` is the identity going forward; going backward it sums an expert weight's
  gradient over the ranks that hold copies of the same experts and divides it by ``divisor``.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist


class ExchangeTimer:
    """Time spent in all-to-all exchanges (forward and backward), read once per logging
    interval. CPU: wall time around the (blocking) call. CUDA: events recorded on the stream
    around the call, read after the step has synchronised anyway, so timing adds no sync."""

    def __init__(self) -> None:
        self._cpu_s = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def measure(self, device: torch.device):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu_s += time.perf_counter() - t0

    def take(self) -> float:
        """Seconds measured since the last call; resets."""
        total = self._cpu_s
        for start, end in self._events:
            end.synchronize()
            total += start.elapsed_time(end) / 1000.0
        self._cpu_s, self._events = 0.0, []
        return total


def _exchange(x_ND, out_splits, in_splits, group, timer: ExchangeTimer | None) -> torch.Tensor:
    x_ND = x_ND.contiguous()
    out_ND = x_ND.new_empty((sum(out_splits), *x_ND.shape[1:]))
    with timer.measure(x_ND.device) if timer is not None else contextlib.nullcontext():
        dist.all_to_all_single(out_ND, x_ND, out_splits, in_splits, group=group)
    return out_ND


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_ND, out_splits, in_splits, group, timer):  # noqa: D102
        ctx.splits = (out_splits, in_splits)
        ctx.group, ctx.timer = group, timer
        return _exchange(x_ND, out_splits, in_splits, group, timer)

    @staticmethod
    def backward(ctx, g_ND):  # noqa: D102
        out_splits, in_splits = ctx.splits  # the reverse exchange: splits swapped
        return _exchange(g_ND, in_splits, out_splits, ctx.group, ctx.timer), None, None, None, None


def all_to_all(
    x_ND: torch.Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group,
    timer: ExchangeTimer | None = None,
) -> torch.Tensor:
    """Send rows ``in_splits[j]`` of ``x_ND`` (in order) to rank j of ``group``; receive
    ``out_splits[j]`` rows from rank j. Differentiable; ``timer`` accumulates the time spent
    in both directions."""
    return _AllToAll.apply(x_ND, list(out_splits), list(in_splits), group, timer)


class _ExpertGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, group, divisor):  # noqa: D102
        ctx.group, ctx.divisor = group, divisor
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        g = g.contiguous()
        if ctx.group is not None and dist.get_world_size(ctx.group) > 1:
            g = g.clone()
            dist.all_reduce(g, group=ctx.group)
        if ctx.divisor != 1.0:
            g = g / ctx.divisor
        return g, None, None


def expert_grad(w: torch.Tensor, group, divisor: float) -> torch.Tensor:
    """Identity; in backward the gradient is summed over ``group`` (the ranks holding the same
    experts; None or size 1: nothing to sum) and divided by ``divisor``."""
    return _ExpertGrad.apply(w, group, float(divisor))


def agree_max(values: list[int], group, device: torch.device) -> list[int]:
    """Element-wise maximum of small integer lists over ``group`` (one all-reduce)."""
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()
