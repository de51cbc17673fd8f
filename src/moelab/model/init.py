"""Weight initialisation schemes (``ModelConfig.init``), every draw from one seeded generator.

``fairseq`` is what the paper's models started from (fairseq ``moe`` branch):

- q/k/v weights: ``xavier_uniform_(gain=1/sqrt(2))`` (``MultiheadAttention.reset_parameters``,
  self-attention has q, k, v of the same size); their biases keep nn.Linear's default.
- out_proj weight: ``xavier_uniform_`` (gain 1); out_proj bias 0.
- fc1/fc2, the modern FFN's w1/w2/w3, every expert and the router ``wg``: nn.Linear's own
  default, ``kaiming_uniform_(a=sqrt(5))`` = U(+-1/sqrt(fan_in)), bias U(+-1/sqrt(fan_in)).
  Stacked expert tensors get exactly that per expert (fan_in = the expert's input size).
- embedding: N(0, D^-1/2) with the ``padding_idx`` row zero (fairseq's ``Embedding``).
- norms: weight 1, bias 0.

``scaled_normal`` (the modern arch's default): N(0, init_std) everywhere, residual output
projections (out_proj, fc2, w2, experts' w2) N(0, init_std / sqrt(2 n_layers)) (GPT-2 style),
biases 0, norms 1; embedding N(0, D^-1/2) in the paper arch, N(0, init_std) in the modern one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from moelab.model.transformer import LanguageModel

_RESIDUAL_OUT = ("out_proj", "fc2", "w2")


def _uniform(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> None:
    t.uniform_(-bound, bound, generator=generator)


def _normal(t: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    nn.init.normal_(t, 0.0, std, generator=generator)


def fairseq_rule(name: str, shapes: dict[str, tuple[int, ...]], d_model: int) -> tuple[str, float]:
    """(distribution, scale) of parameter ``name`` under fairseq's init: ``("uniform", bound)``,
    ``("normal", std)`` or ``("const", value)``. ``shapes`` maps every parameter name to its
    shape (a bias's fan_in is its weight's input size). tests/test_init.py checks the drawn
    tensors against its own table of fairseq's rule."""
    leaf = name.rsplit(".", 1)[-1]
    shape = shapes[name]
    if name == "embed.weight":
        return "normal", d_model**-0.5
    if "norm" in name:
        return "const", 1.0 if leaf == "weight" else 0.0
    if ".experts." in name:
        # Stacked per-expert tensors: w1/w3 (E, D, F), w2 (E, F, D), b1 (E, F), b2 (E, D).
        # Expert e is nn.Linear(D, F) then nn.Linear(F, D): fan_in D for w1/w3/b1, F for w2/b2.
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
        return "const", 0.0  # fairseq zeroes only out_proj's bias; q/k/v keep nn.Linear's
    # nn.Linear's default (router gate, dense FFN, q/k/v biases): U(+-1/sqrt(fan_in)).
    weight_shape = shape if leaf == "weight" else shapes[name[: -len(leaf)] + "weight"]
    return "uniform", 1 / math.sqrt(weight_shape[1])


def init_weights(model: LanguageModel, generator: torch.Generator | None = None) -> None:
    """Initialise ``model`` in place by ``model.cfg.init`` (see the module docstring)."""
    scheme = model.cfg.init
    if scheme == "fairseq":
        _init_fairseq(model, generator)
    elif scheme == "scaled_normal":
        _init_scaled_normal(model, generator)
    else:  # ModelConfig.validate names the valid schemes
        raise ValueError(f"unknown init scheme {scheme!r}")


def _init_fairseq(model: LanguageModel, generator: torch.Generator | None) -> None:
    cfg = model.cfg
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            kind, scale = fairseq_rule(name, shapes, cfg.d_model)
            if kind == "uniform":
                _uniform(p, scale, generator)
            elif kind == "normal":
                _normal(p, scale, generator)
            else:
                p.fill_(scale)
        if 0 <= cfg.padding_idx < cfg.vocab_size:
            # fairseq's Embedding zeroes the padding row (moelab's tokenizers put <|pad|> at 1,
            # fairseq's dictionary too). The row still trains: moelab does not freeze it.
            params["embed.weight"][cfg.padding_idx].zero_()


def _init_scaled_normal(model: LanguageModel, generator: torch.Generator | None) -> None:
    cfg = model.cfg
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 2)
            if name == "embed.weight":
                _normal(p, cfg.d_model**-0.5 if cfg.arch == "paper" else std, generator)
            elif "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias") or name.endswith(".b1") or name.endswith(".b2"):
                p.zero_()
            elif any(part in _RESIDUAL_OUT for part in leaf[-2:]):
                _normal(p, out_std, generator)
            else:
                _normal(p, std, generator)
