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


def scaled_normal_rule(name: str, cfg) -> tuple[str, float]:
    """(distribution, scale) of parameter ``name`` under ``scaled_normal`` (module docstring)."""
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


def init_rule(cfg, name: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str, float]:
    """(distribution, scale) of parameter ``name`` under ``cfg.init``."""
    if cfg.init == "fairseq":
        return fairseq_rule(name, shapes, cfg.d_model)
    if cfg.init == "scaled_normal":
        return scaled_normal_rule(name, cfg)
    raise ValueError(f"unknown init scheme {cfg.init!r}")  # ModelConfig.validate names them


def _draw(t: torch.Tensor, kind: str, scale: float, generator: torch.Generator | None) -> None:
    if kind == "uniform":
        _uniform(t, scale, generator)
    elif kind == "normal":
        _normal(t, scale, generator)
    else:
        t.fill_(scale)


def _zeroes_padding_row(cfg) -> bool:
    # fairseq's Embedding zeroes the padding row (moelab's tokenizers put <|pad|> at 1, fairseq's
    # dictionary too). The row still trains: moelab does not freeze it.
    return cfg.init == "fairseq" and 0 <= cfg.padding_idx < cfg.vocab_size


def init_weights(model: LanguageModel, generator: torch.Generator | None = None) -> None:
    """Initialise ``model`` in place by ``model.cfg.init`` (see the module docstring): every
    parameter in order, each drawn whole from ``generator``."""
    cfg = model.cfg
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            _draw(p, *init_rule(cfg, name, shapes), generator)
        if _zeroes_padding_row(cfg):
            params["embed.weight"][cfg.padding_idx].zero_()


# Rows drawn at a time for the parts of a parameter another rank holds (bounded scratch).
_SCRATCH_ELEMENTS = 1 << 20


def init_shards(
    cfg,
    shapes: dict[str, tuple[int, ...]],
    shards: dict[str, tuple[torch.Tensor, tuple[int, ...]]],
    generator: torch.Generator | None,
) -> None:
    """Initialise one rank's shards of a model so that they equal the same slices of
    :func:`init_weights` on the whole model, at any sharding (one process or many, any
    expert-parallel degree).

    ``shapes``: every parameter's full shape, in the model's parameter order (the order the
    generator is drawn in); ``shards``: name -> (this rank's local tensor, its offset in the full
    tensor). Every rank draws the whole random stream in that order, but only ever holds its
    own shard plus a bounded scratch: rows of a parameter before and after its shard are drawn
    in blocks and dropped. That is the same stream because uniform draws are one per element in
    order, and torch's CPU normal fills blocks of 16 from uniform draws in order (so blocks of
    whole rows of a multiple of 16 elements draw the same); other normal tensors (1-D, odd
    rows) are drawn whole and sliced."""
    with torch.no_grad():
        for name, shape in shapes.items():
            local, offset = shards[name]
            kind, scale = init_rule(cfg, name, shapes)
            if kind == "const":
                local.fill_(scale)
                continue
            row = math.prod(shape[1:])
            by_rows = (
                len(shape) >= 1
                and all(o == 0 for o in offset[1:])
                and tuple(local.shape[1:]) == tuple(shape[1:])
                and local.is_contiguous()
                and (kind == "uniform" or row % 16 == 0)
            )
            if not by_rows:  # drawn whole, this rank's slice kept
                full = torch.empty(shape, dtype=local.dtype)
                _draw(full, kind, scale, generator)
                index = tuple(slice(o, o + n) for o, n in zip(offset, local.shape))
                local.copy_(full[index])
                continue
            start, n = offset[0], local.shape[0]
            _skip_rows(start, shape, local.dtype, kind, scale, generator)
            if n:
                _draw(local, kind, scale, generator)
            _skip_rows(shape[0] - start - n, shape, local.dtype, kind, scale, generator)
        if _zeroes_padding_row(cfg):
            embed, offset = shards["embed.weight"]
            row = cfg.padding_idx - offset[0]
            if 0 <= row < embed.shape[0]:
                embed[row].zero_()


def _skip_rows(rows: int, shape, dtype, kind: str, scale: float, generator) -> None:
    """Draw ``rows`` rows of a parameter of ``shape`` and drop them (another rank's)."""
    row = math.prod(shape[1:])
    block = max(1, _SCRATCH_ELEMENTS // max(1, row))
    while rows > 0:
        k = min(block, rows)
        _draw(torch.empty((k, *shape[1:]), dtype=dtype), kind, scale, generator)
        rows -= k


def init_buffers(model: LanguageModel, device: torch.device) -> None:
    """Recompute the model's buffers (none is saved: they are functions of the config), for a
    model materialised with ``to_empty``: the paper arch's sinusoidal position table."""
    from moelab.model.positions import sinusoidal_table

    cfg = model.cfg
    if cfg.arch == "paper":
        rows = model.pos_table.shape[0]
        model.pos_table = sinusoidal_table(rows, cfg.d_model, cfg.padding_idx).to(device)
