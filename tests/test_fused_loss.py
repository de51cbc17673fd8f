"""The chunked LM-head cross-entropy equals logits + F.cross_entropy, in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moelab.model import build_model, fused_loss
from moelab.model.fused_loss import linear_cross_entropy
from moelab.presets import get_preset


def _reference(h_ND, w_VD, t_N):
    return F.cross_entropy(F.linear(h_ND, w_VD).float(), t_N)


@pytest.mark.parametrize("n_rows", [1, 7, 64, 300])
def test_value_and_gradients_match_unfused(monkeypatch, n_rows):
    # 40 rows per chunk at V=50: several chunks and a ragged last one.
    monkeypatch.setattr(fused_loss, "_CPU_CHUNK_ELEMENTS", 2000)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n_rows, 16, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(50, 16, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, 50, (n_rows,), generator=g)
    ours = linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(3.0 * ours, (h, w))
    ref = _reference(h, w, t)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    # float64 in, float32 softmax (as the unfused path's .float()): agree to float32 rounding.
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, rh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-7)


def test_no_grad_gives_the_loss_only():
    h, w = torch.randn(10, 8), torch.randn(20, 8)
    t = torch.randint(0, 20, (10,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), _reference(h, w, t))


def test_bf16_autocast_close_to_unfused_autocast():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(96, 32, generator=g).requires_grad_()
    w = (0.1 * torch.randn(300, 32, generator=g)).requires_grad_()
    t = torch.randint(0, 300, (96,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, t)
        ref = _reference(h, w, t)
    gh, gw = torch.autograd.grad(ours, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert ours.dtype == torch.float32 and gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-4)


def test_mismatched_targets_are_refused():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(
            torch.randn(4, 8), torch.randn(20, 8), torch.zeros(3, dtype=torch.long)
        )


@pytest.mark.parametrize("preset", ["dense-cpu-0.5m", "moe-cpu-0.5m-modern"])
def test_model_with_targets_equals_logits_path(preset):
    """The training path (targets in, loss out) and the logits path give the same loss and the
    same gradient for every parameter, for both architectures (tied embedding included)."""
    cfg = get_preset(preset)
    tokens = torch.randint(2, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(2))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    grads = []
    losses = []
    for fused in (True, False):
        model = build_model(cfg, seed=0).train()
        if fused:
            out = model(inputs, targets_BT=targets)
            assert out.logits_BTV is None
            loss = out.ce_loss
        else:
            logits = model(inputs).logits_BTV
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size).float(), targets.reshape(-1))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7, msg=name)
