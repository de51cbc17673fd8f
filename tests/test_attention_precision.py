"""Under bf16 autocast on a CPU without AMX the attention core runs in fp32; with AMX (or fp32
inputs) it follows the input dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moelab.model.attention import Attention


def _run(monkeypatch, amx: bool):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    torch.manual_seed(0)
    attn = Attention(32, 4, bias=False, attn_dropout=0.0, layer=0)
    x = torch.randn(2, 9, 32)
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real_sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x)
    y.float().sum().backward()
    return seen, y


@pytest.mark.parametrize("amx, core_dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_attention_core_dtype(monkeypatch, amx, core_dtype):
    seen, y = _run(monkeypatch, amx)
    assert seen == [core_dtype]
    assert y.dtype == torch.bfloat16  # the output projection still runs under autocast
