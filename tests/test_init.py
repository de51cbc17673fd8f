"""Initialisation: fairseq's rule tensor by tensor, block outputs against the residual stream at
init, and the init scheme as part of the run's identity (config hash)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moelab.config import ModelConfig, from_dict, to_dict
from moelab.errors import MoelabError
from moelab.model import build_model
from moelab.presets import PRESETS, get_preset
from moelab.train import run_config_from_dict

# The fairseq rule, written out here from fairseq's `moe` branch (not from moelab's code):
# MultiheadAttention.reset_parameters: q/k/v xavier_uniform_(gain=1/sqrt(2)), out_proj
# xavier_uniform_ and bias 0 (q/k/v biases keep nn.Linear's default); fc1/fc2, the experts
# (FeedForwardNetwork) and Top2Gate.wg are plain nn.Linear: U(+-1/sqrt(fan_in)) for weight and
# bias; Embedding: N(0, D^-0.5), padding row 0; LayerNorm 1 / 0.


def xavier_bound(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


def expected_fairseq(name: str, D: int, F: int) -> tuple[str, float]:
    """(kind, scale) per tensor kind of a paper-arch model."""
    table = {
        "embed.weight": ("normal", D**-0.5),
        "attn.q_proj.weight": ("uniform", xavier_bound(D, D, 1 / math.sqrt(2))),
        "attn.k_proj.weight": ("uniform", xavier_bound(D, D, 1 / math.sqrt(2))),
        "attn.v_proj.weight": ("uniform", xavier_bound(D, D, 1 / math.sqrt(2))),
        "attn.out_proj.weight": ("uniform", xavier_bound(D, D)),
        "attn.q_proj.bias": ("uniform", 1 / math.sqrt(D)),
        "attn.k_proj.bias": ("uniform", 1 / math.sqrt(D)),
        "attn.v_proj.bias": ("uniform", 1 / math.sqrt(D)),
        "attn.out_proj.bias": ("const", 0.0),
        "ffn.fc1.weight": ("uniform", 1 / math.sqrt(D)),
        "ffn.fc1.bias": ("uniform", 1 / math.sqrt(D)),
        "ffn.fc2.weight": ("uniform", 1 / math.sqrt(F)),
        "ffn.fc2.bias": ("uniform", 1 / math.sqrt(F)),
        "ffn.gate.weight": ("uniform", 1 / math.sqrt(D)),
        "ffn.experts.w1": ("uniform", 1 / math.sqrt(D)),
        "ffn.experts.b1": ("uniform", 1 / math.sqrt(D)),
        "ffn.experts.w2": ("uniform", 1 / math.sqrt(F)),
        "ffn.experts.b2": ("uniform", 1 / math.sqrt(F)),
        "norm.weight": ("const", 1.0),
        "norm.bias": ("const", 0.0),
    }
    if name in table:
        return table[name]
    parts = name.split(".")
    if parts[0] == "layers":
        key = ".".join(parts[2:])
        if key in table:
            return table[key]
    if "norm" in name:
        return table["norm." + parts[-1]]
    raise AssertionError(f"no expected rule for {name}")


def check_tensor(name: str, t: torch.Tensor, kind: str, scale: float) -> None:
    t = t.detach().double()
    n = t.numel()
    if kind == "const":
        assert torch.all(t == scale), name
        return
    # std of n iid draws: relative standard error about 1/sqrt(2n) (normal), 0.9/sqrt(n)
    # (uniform); 5 of those plus a floor keeps the test from flaking yet catches a wrong rule.
    rel = 5.0 / math.sqrt(n) + 0.01
    if kind == "uniform":
        assert t.abs().max() <= scale * (1 + 1e-6), name
        assert t.std().item() == pytest.approx(scale / math.sqrt(3), rel=rel), name
        if n >= 1000:  # the largest draw comes close to the bound
            assert t.abs().max() >= 0.98 * scale, name
    else:
        assert t.std().item() == pytest.approx(scale, rel=rel), name
        assert abs(t.mean().item()) < 5 * scale / math.sqrt(n), name


@pytest.mark.parametrize("preset", ["moe-cpu-0.5m", "dense-cpu-2m"])
def test_every_tensor_follows_fairseq_rule(preset):
    cfg = dataclasses.replace(get_preset(preset), vocab_size=2048)
    assert cfg.init == "fairseq"
    model = build_model(cfg, seed=3)
    D, F = cfg.d_model, cfg.d_ffn
    seen: set[str] = set()
    for name, p in model.named_parameters():
        kind, scale = expected_fairseq(name, D, F)
        if name == "embed.weight":
            # fairseq's Embedding: padding row zero, the rest N(0, D^-0.5).
            assert torch.all(p[cfg.padding_idx] == 0)
            rows = torch.ones(p.shape[0], dtype=torch.bool)
            rows[cfg.padding_idx] = False
            check_tensor(name, p[rows], kind, scale)
        elif ".experts." in name:
            # Stacked (E, ...) tensors: every expert is its own nn.Linear draw.
            for e in range(p.shape[0]):
                check_tensor(f"{name}[{e}]", p[e], kind, scale)
            assert not torch.equal(p[0], p[1]), name
        else:
            check_tensor(name, p, kind, scale)
        seen.add(".".join(name.split(".")[2:]) if name.startswith("layers.") else name)
    # Every kind of tensor was checked (expected_fairseq fails on any it does not know).
    kinds = {"attn.q_proj.weight", "attn.out_proj.bias", "attn_norm.weight", "final_norm.bias"}
    kinds |= {"ffn.gate.weight", "ffn.experts.w1", "ffn.experts.b2"} if cfg.is_moe else set()
    assert kinds <= seen, kinds - seen


def test_fairseq_init_is_seeded():
    cfg = dataclasses.replace(get_preset("moe-cpu-0.5m"), vocab_size=512)
    a, b, c = build_model(cfg, seed=5), build_model(cfg, seed=5), build_model(cfg, seed=6)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if "norm" not in name and "out_proj.bias" not in name:
            assert not torch.equal(p, r), name


def block_ratios(cfg: ModelConfig, seed: int = 0) -> list[tuple[float, float]]:
    """Per block: RMS of the attention branch and of the FFN branch over the RMS of the
    residual stream entering the block, on random tokens (eval mode: no dropout)."""
    model = build_model(cfg, seed=seed).eval()
    rms: dict[tuple[int, str], float] = {}

    def hook(i, what):
        def fn(module, args, out):
            y = out.y_BTD if hasattr(out, "y_BTD") else out
            rms[(i, what)] = y.pow(2).mean().sqrt().item()

        return fn

    for i, block in enumerate(model.layers):
        block.register_forward_pre_hook(
            lambda m, args, i=i: rms.__setitem__((i, "in"), args[0].pow(2).mean().sqrt().item())
        )
        block.attn.register_forward_hook(hook(i, "attn"))
        block.ffn.register_forward_hook(hook(i, "ffn"))
    tokens = torch.randint(2, cfg.vocab_size, (4, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(tokens)
    n = len(model.layers)
    return [(rms[(i, "attn")] / rms[(i, "in")], rms[(i, "ffn")] / rms[(i, "in")]) for i in range(n)]


# Measured (seed 0, random tokens, vocab 2048, 4 x 128 tokens): with fairseq's init the paper
# blocks start at 0.24-0.37 (attention) and 0.10-0.17 (FFN, dense or MoE) of the residual
# stream's RMS; with the GPT-2 style scaled_normal init at 0.005 and 0.008-0.016, i.e. the
# network starts as nearly the identity.
ATTN_BAND = (0.15, 0.6)
FFN_BAND = (0.07, 0.35)


@pytest.mark.parametrize("preset", ["dense-cpu-0.5m", "moe-cpu-0.5m", "dense-cpu-2m"])
def test_paper_blocks_start_at_a_fixed_fraction_of_the_residual_stream(preset):
    cfg = dataclasses.replace(get_preset(preset), vocab_size=2048)
    for i, (attn, ffn) in enumerate(block_ratios(cfg)):
        assert ATTN_BAND[0] <= attn <= ATTN_BAND[1], (i, attn)
        assert FFN_BAND[0] <= ffn <= FFN_BAND[1], (i, ffn)
    # The band is one the GPT-2 style init fails: its blocks start near the identity.
    gpt2 = dataclasses.replace(cfg, init="scaled_normal")
    for attn, ffn in block_ratios(gpt2):
        assert attn < ATTN_BAND[0] / 10 and ffn < FFN_BAND[0] / 3


def test_presets_name_their_init():
    for name, cfg in PRESETS.items():
        expected = "scaled_normal" if cfg.arch == "modern" else "fairseq"
        assert cfg.init == expected, name


def test_omitted_init_resolves_to_the_arch_default_and_is_saved():
    assert ModelConfig(arch="paper").init == "fairseq"
    assert ModelConfig(arch="modern").init == "scaled_normal"
    cfg = from_dict(ModelConfig, {"arch": "modern", "init": None})
    assert to_dict(cfg)["init"] == "scaled_normal"
    with pytest.raises(MoelabError, match=r"model\.init: must be one of fairseq, scaled_normal"):
        ModelConfig(init="xavier").validate()


def run_config(model: dict | str):
    raw = {"model": model, "data": "/nonexistent", "train": {"budget_tokens": 10000}}
    return run_config_from_dict(raw, check_data=False)


def test_init_choice_changes_the_config_hash():
    fairseq = run_config("dense-cpu-0.5m")
    explicit = run_config({"preset": "dense-cpu-0.5m", "init": "fairseq"})
    gpt2 = run_config({"preset": "dense-cpu-0.5m", "init": "scaled_normal"})
    assert fairseq.model.init == "fairseq"
    assert fairseq.config_hash() == explicit.config_hash()
    assert gpt2.config_hash() != fairseq.config_hash()
    # A model section without a preset or an init gets its arch's default, written out.
    custom = run_config({"arch": "modern", "n_layers": 2, "d_model": 64, "n_heads": 2})
    assert custom.to_dict()["model"]["init"] == "scaled_normal"
    assert "init: scaled_normal" in custom.to_yaml()


def test_arch_override_on_a_preset_takes_that_arch_init():
    """{preset: dense-cpu-0.5m, arch: modern} is a modern model: it gets the modern init unless
    the config names one."""
    from moelab.train.config import _resolve_model

    cfg, _, _ = _resolve_model({"preset": "dense-cpu-0.5m", "arch": "modern"})
    assert cfg.arch == "modern" and cfg.init == "scaled_normal"
    cfg, _, _ = _resolve_model({"preset": "dense-cpu-0.5m", "arch": "modern", "init": "fairseq"})
    assert cfg.init == "fairseq"
    cfg, _, _ = _resolve_model({"preset": "dense-cpu-0.5m-modern", "arch": "paper"})
    assert cfg.init == "fairseq"
