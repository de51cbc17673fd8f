"""The grouped_mm expert kernel against the loop kernel, and the MoE layer compiled whole.

grouped_mm runs every expert in one ``torch._grouped_mm`` call from offsets on the device; the
loop (today's CPU default) runs one product per expert from counts on the host. Both must
compute the same function, forward and backward, including the rows of dropped assignments
that the sync-free dispatch keeps at the end (padded rows: zeros out, zero gradient in).
"""

from __future__ import annotations

import pytest
import torch

from moelab.config import ModelConfig
from moelab.model.grouped import use_grouped_mm
from moelab.model.moe import Experts, MoeFFN

COUNTS = [5, 0, 7, 4]  # 16 rows, expert 1 empty
# bf16 (8-bit mantissa, eps 2**-7 = 7.8e-3): the largest error relative to the largest entry.
# Measured: at most 1.4e-2 for either kernel against fp32, 4.8e-3 between the two kernels.
BF16_TOL = 2e-2


def assert_close_bf16(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    err = (a.float() - b.float()).abs().max()
    assert err <= BF16_TOL * b.float().abs().max(), f"{msg}: {err}"


def _experts(arch: str, kernel: str, dtype=torch.float32, dropout: float = 0.0) -> Experts:
    torch.manual_seed(0)
    ex = Experts(4, 8, 16, arch, activation_dropout=dropout)
    with torch.no_grad():
        for p in ex.parameters():
            p.normal_(0.0, 0.5)
    ex.kernel = kernel
    return ex.to(dtype)


def _run(ex: Experts, x: torch.Tensor, counts, padded: bool = False):
    """Output, input gradient and weight gradients of a random linear loss."""
    x = x.clone().requires_grad_()
    ex.zero_grad()
    y = ex(x, counts, padded)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.dtype)
    (y * w).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in ex.named_parameters()}


@pytest.mark.parametrize("arch", ["paper", "modern"])
def test_grouped_mm_equals_loop_fp32(arch):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    loop = _run(_experts(arch, "loop"), x, COUNTS)
    grouped_ex = _experts(arch, "grouped_mm")
    assert grouped_ex.uses_grouped_mm(x)
    for counts in (COUNTS, torch.tensor(COUNTS)):  # host list or device tensor
        grouped = _run(grouped_ex, x, counts)
        torch.testing.assert_close(grouped[0], loop[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grouped[1], loop[1], rtol=1e-6, atol=1e-6)
        for name, g in loop[2].items():
            torch.testing.assert_close(grouped[2][name], g, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["paper", "modern"])
def test_grouped_mm_padded_rows(arch):
    """Rows past the groups (dropped assignments) give zeros and take no gradient."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    extra = 1e3 * torch.randn(5, 8)  # large, so any leak into the experts shows
    loop = _run(_experts(arch, "loop"), x, COUNTS)
    grouped = _experts(arch, "grouped_mm")
    y, gx, gw = _run(grouped, torch.cat([x, extra]), torch.tensor(COUNTS), padded=True)
    assert torch.equal(y[16:], torch.zeros(5, 8)) and torch.equal(gx[16:], torch.zeros(5, 8))
    torch.testing.assert_close(y[:16], loop[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx[:16], loop[1], rtol=1e-6, atol=1e-6)
    for name, g in loop[2].items():
        torch.testing.assert_close(gw[name], g, rtol=1e-6, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="loop kernel"):
        _experts(arch, "loop")(torch.cat([x, extra]), torch.tensor(COUNTS), True)


@pytest.mark.parametrize("arch", ["paper", "modern"])
def test_grouped_mm_bf16_close_to_loop(arch):
    """bf16: the kernels round differently (grouped_mm adds the bias after the product, the
    loop inside addmm), so they agree to bf16 precision (BF16_TOL), with each other and with
    fp32."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    ref = _run(_experts(arch, "loop"), x, COUNTS)  # fp32
    loop = _run(_experts(arch, "loop", torch.bfloat16), x.bfloat16(), COUNTS)
    grouped = _run(_experts(arch, "grouped_mm", torch.bfloat16), x.bfloat16(), COUNTS)
    for a, b in ((grouped, loop), (grouped, ref)):
        assert_close_bf16(a[0], b[0], "y")
        assert_close_bf16(a[1], b[1], "x grad")
        for name, g in b[2].items():
            assert_close_bf16(a[2][name], g, name)


@pytest.mark.parametrize("arch", ["paper", "modern"])
def test_grouped_mm_activation_dropout_draws_the_loops_mask(arch):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    outs = []
    for kernel in ("loop", "grouped_mm"):
        torch.manual_seed(7)
        outs.append(_run(_experts(arch, kernel, dropout=0.5).train(), x, COUNTS))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-6, atol=1e-6)


def test_kernel_choice():
    cpu = torch.device("cpu")
    # CPU eager: the loop unless asked (today's numbers); grouped_mm needs 16-byte rows.
    assert not use_grouped_mm("auto", torch.float32, cpu, (8, 16))
    assert not use_grouped_mm("auto", torch.bfloat16, cpu, (8, 16))
    assert use_grouped_mm("grouped_mm", torch.float32, cpu, (8, 16))
    assert not use_grouped_mm("loop", torch.bfloat16, cpu, (8, 16))
    with pytest.raises(ValueError, match="16 bytes"):
        use_grouped_mm("grouped_mm", torch.float32, cpu, (6, 16))
    with pytest.raises(ValueError, match="16 bytes"):
        use_grouped_mm("grouped_mm", torch.float64, cpu, (8, 16))
    with pytest.raises(ValueError, match="auto, loop, grouped_mm"):
        use_grouped_mm("cutlass", torch.float32, cpu, (8, 16))


def _layer(arch: str, cf: float | None, kernel: str, dtype=torch.float32) -> MoeFFN:
    cfg = ModelConfig(
        arch=arch, d_model=16, n_heads=2, d_ffn=32, n_experts=4, top_k=2, capacity_factor=cf
    )
    torch.manual_seed(0)
    layer = MoeFFN(cfg, layer=1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    layer.experts.kernel = kernel
    return layer.to(dtype).train()


def _layer_step(layer: MoeFFN, x_BTD: torch.Tensor, fn=None):
    x = x_BTD.clone().requires_grad_()
    layer.zero_grad()
    out = (layer if fn is None else fn)(x)
    w = torch.randn(out.y_BTD.shape, generator=torch.Generator().manual_seed(3))
    ((out.y_BTD.float() * w).sum() + 0.3 * out.aux_loss).backward()
    grads = {n: p.grad.float() for n, p in layer.named_parameters()}
    return out, x.grad.float(), grads


@pytest.mark.parametrize("arch,cf", [("paper", 1.0), ("modern", None), ("paper", 0.5)])
def test_layer_grouped_mm_equals_loop(arch, cf):
    """The whole layer: capacity mode keeps dropped assignments as padded rows on the
    grouped_mm path and removes them (host counts) on the loop path."""
    x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(2))
    loop_out, loop_gx, loop_g = _layer_step(_layer(arch, cf, "loop"), x)
    out, gx, g = _layer_step(_layer(arch, cf, "grouped_mm"), x)
    if cf == 0.5:
        assert loop_out.stats.dropped_frac_K.sum() > 0  # some rows are really dropped
    torch.testing.assert_close(out.y_BTD, loop_out.y_BTD, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, loop_gx, rtol=1e-6, atol=1e-6)
    for name, grad in loop_g.items():
        torch.testing.assert_close(g[name], grad, rtol=1e-6, atol=1e-6, msg=name)
    assert torch.equal(out.stats.tokens_kept_E, loop_out.stats.tokens_kept_E)


@pytest.mark.slow
@pytest.mark.parametrize("cf", [None, 1.0])
def test_layer_compiles_whole_graph(cf):
    """torch.compile(fullgraph=True) refuses any graph break, and every host sync (a count
    read to the host, a data-dependent shape) is one: forward and backward of the layer trace
    as one graph each, dropless and with capacity. bf16: torch 2.13 traces grouped_mm only in
    bf16; the layer picks it under compile on its own (kernel "auto")."""
    torch._dynamo.reset()
    layer = _layer("paper", cf, "auto", torch.bfloat16)
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(4)).bfloat16()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, gx, grads = _layer_step(layer, x, compiled)
    layer.experts.kernel = "grouped_mm"  # the same kernel, eager
    ref, ref_gx, ref_grads = _layer_step(layer, x)
    assert_close_bf16(out.y_BTD, ref.y_BTD, "y")
    assert_close_bf16(gx, ref_gx, "x grad")
    for name, grad in ref_grads.items():
        assert_close_bf16(grads[name], grad, name)
    assert torch.equal(out.stats.tokens_kept_E, ref.stats.tokens_kept_E)
