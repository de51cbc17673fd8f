"""Initialisation by module type (moelab.model.init.RULES) gives exactly the weights of the
name-based rules it replaced, for every preset and both init schemes, and does not depend on
parameter names."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch
from torch import nn

from moelab.model import build_model
from moelab.model.init import init_plan
from moelab.model.transformer import LanguageModel
from moelab.presets import PRESETS, get_preset

# The rules as moelab.model.init wrote them until it dispatched on module types (commit a6179d2),
# by parameter-name substrings; kept verbatim as the reference.
_RESIDUAL_OUT = ("out_proj", "fc2", "w2")


def fairseq_rule(name: str, shapes: dict[str, tuple[int, ...]], d_model: int):
    leaf = name.rsplit(".", 1)[-1]
    shape = shapes[name]
    if name == "embed.weight":
        return "normal", d_model**-0.5
    if "norm" in name:
        return "const", 1.0 if leaf == "weight" else 0.0
    if ".experts." in name:
        prefix = name[: -len(leaf)]
        if leaf in ("w1", "w2", "w3"):
            return "uniform", 1 / math.sqrt(shape[1])
        fan_in = d_model if leaf == "b1" else shapes[prefix + "w2"][1]
        return "uniform", 1 / math.sqrt(fan_in)
    proj = name.split(".")[-2]
    if ".attn." in name and leaf == "weight":
        fan_out, fan_in = shape
        gain = 1.0 if proj == "out_proj" else 1 / math.sqrt(2)
        return "uniform", gain * math.sqrt(6.0 / (fan_in + fan_out))
    if ".attn." in name and proj == "out_proj":
        return "const", 0.0
    weight_shape = shape if leaf == "weight" else shapes[name[: -len(leaf)] + "weight"]
    return "uniform", 1 / math.sqrt(weight_shape[1])


def scaled_normal_rule(name: str, cfg):
    std = cfg.init_std
    leaf = name.rsplit(".", 2)
    if name == "embed.weight":
        return "normal", cfg.d_model**-0.5 if cfg.arch == "paper" else std
    if "norm" in name:
        return "const", 1.0 if name.endswith("weight") else 0.0
    if name.endswith("bias") or name.endswith(".b1") or name.endswith(".b2"):
        return "const", 0.0
    if any(part in _RESIDUAL_OUT for part in leaf[-2:]):
        return "normal", std / math.sqrt(2 * cfg.n_layers)
    return "normal", std


def reference_rule(cfg, name, shapes):
    if cfg.init == "fairseq":
        return fairseq_rule(name, shapes, cfg.d_model)
    return scaled_normal_rule(name, cfg)


def test_every_preset_and_scheme_gets_the_rules_of_before():
    for preset, cfg in PRESETS.items():
        with torch.device("meta"):  # shapes only: the 1.1T preset too
            model = LanguageModel(cfg)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for init in ("fairseq", "scaled_normal"):
            c = dataclasses.replace(cfg, init=init)
            plan = init_plan(model, c)
            assert list(plan) == list(shapes), preset  # the same draw order
            for name, (shape, rule) in plan.items():
                assert shape == shapes[name]
                # == on floats: the same scale to the last bit
                assert rule == reference_rule(c, name, shapes), (preset, init, name)


# _digest (below) of build_model(preset with init=..., seed=3), computed by the name-based code
# of commit a6179d2 (a worktree of that commit on PYTHONPATH; torch 2.13 CPU, whose generator
# the digests depend on).
BEFORE = {
    ("moe-cpu-0.25m", "fairseq"): "8472d0ad036e1f22",
    ("moe-cpu-0.25m", "scaled_normal"): "622233926afaaacd",
    ("moe-cpu-0.25m-modern", "fairseq"): "a878727aa956a321",
    ("moe-cpu-0.25m-modern", "scaled_normal"): "b6a514c06dcc161a",
    ("dense-cpu-0.25m", "fairseq"): "39a9a3063c043193",
    ("dense-cpu-0.25m", "scaled_normal"): "a27b0943e667d298",
}


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="digests of torch 2.13")
def test_weights_are_bitwise_those_of_before():
    got = {
        (preset, init): _digest(
            build_model(dataclasses.replace(get_preset(preset), init=init), seed=3)
        )
        for preset, init in BEFORE
    }
    assert got == BEFORE


def test_names_do_not_choose_the_rule_and_a_module_without_one_is_refused():
    cfg = dataclasses.replace(get_preset("moe-cpu-0.25m"), n_layers=2)
    with torch.device("meta"):
        model = LanguageModel(cfg)
    plan = init_plan(model, cfg)
    # The same modules under other names (a prefix on every name): the same rules.
    renamed = init_plan(nn.ModuleDict({"net": model}), cfg)
    assert [r for _, r in renamed.values()] == [r for _, r in plan.values()]

    class Scale(nn.Module):  # a module type no rule knows
        def __init__(self):
            super().__init__()
            self.norm_weight = nn.Parameter(torch.ones(3))  # "norm" in the name: no matter

    model.layers[0].extra = Scale()
    with pytest.raises(ValueError, match=r"no init rule for layers\.0\.extra\.norm_weight \(Scale"):
        init_plan(model, cfg)


def test_buffers_of_a_model_materialised_with_to_empty_get_their_initial_values():
    from moelab.model.init import init_buffers

    cfg = dataclasses.replace(get_preset("moe-cpu-0.25m"), n_layers=2, balance="bias")
    cfg.validate()
    with torch.device("meta"):
        model = LanguageModel(cfg)
    model.to_empty(device="cpu")
    for b in model.buffers():
        b.fill_(7)  # what to_empty left there: anything
    init_buffers(model, torch.device("cpu"))
    ref = LanguageModel(cfg)
    buffers = dict(model.named_buffers())
    assert any(n.endswith("score_bias") for n in buffers) and any("load_E" in n for n in buffers)
    for name, b in ref.named_buffers():
        assert torch.equal(buffers[name], b), name
