"""Rotary positions: the hand-written op equals Llama's formula bitwise, gradients to rounding."""

from __future__ import annotations

import torch

from moelab.model.positions import apply_rotary, rotary_cos_sin


def _reference(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def test_rotary_matches_the_formula_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    cos, sin = rotary_cos_sin(torch.arange(3, 40), 16, 10000.0)
    # A transposed view, as attention passes it: (B, T, H, d) -> (B, H, T, d).
    x = torch.randn(2, 37, 3, 16, generator=g).transpose(1, 2).requires_grad_()
    gy = torch.randn(2, 3, 37, 16, generator=g)
    y = apply_rotary(x, cos, sin)
    ref = _reference(x, cos, sin)
    assert torch.equal(y, ref)
    (gx,) = torch.autograd.grad(y, x, gy)
    (rx,) = torch.autograd.grad(ref, x, gy)
    torch.testing.assert_close(gx, rx, rtol=1e-6, atol=1e-6)


def test_rotary_is_a_rotation():
    # Each (i, i + d/2) pair keeps its length, and position 0 is the identity.
    cos, sin = rotary_cos_sin(torch.arange(5), 8, 10000.0)
    x = torch.randn(1, 1, 5, 8, dtype=torch.float64)
    y = apply_rotary(x, cos.double(), sin.double())
    norms = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(norms(y), norms(x))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])
