"""RMSNorm's hand-written backward equals autograd through the reference formula."""

from __future__ import annotations

import pytest
import torch

from moelab.model.rms_norm import RMSNorm


def _reference(x, weight, eps):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_is_bitwise_the_reference_and_backward_matches(dtype):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(24, generator=g, dtype=dtype))
    x = torch.randn(3, 5, 24, generator=g, dtype=dtype).requires_grad_()
    gy = torch.randn(3, 5, 24, generator=g, dtype=dtype)
    y = norm(x)
    assert torch.equal(y, _reference(x, norm.weight, 1e-5))
    gx, gw = torch.autograd.grad(y, (x, norm.weight), gy)
    rx, rw = torch.autograd.grad(_reference(x, norm.weight, 1e-5), (x, norm.weight), gy)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)


def test_bf16_input():
    g = torch.Generator().manual_seed(2)
    norm = RMSNorm(16, eps=1e-5)
    x = torch.randn(6, 16, generator=g).bfloat16().requires_grad_()
    y = norm(x)
    assert y.dtype == torch.float32  # float32 weight times bf16 normalised input
    gy = torch.randn(6, 16, generator=g)
    gx, gw = torch.autograd.grad(y, (x, norm.weight), gy)
    rx, rw = torch.autograd.grad(_reference(x, norm.weight, 1e-5), (x, norm.weight), gy)
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    torch.testing.assert_close(gx.float(), rx.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)
