"""Weight initialisation schemes (``ModelConfig.init``: ``fairseq``, what the paper's models
started from, and ``scaled_normal``, GPT-2 style), every draw from one seeded generator;
docs/model.md (*Initialisation*) is the one table of what each tensor gets.

Each parameter's rule comes from the type of the module holding it (:data:`RULES`: attention,
dense FFN, stacked experts, nn.Linear, embedding, norms), never from its name, so renaming a
parameter cannot change its initialisation, and a parameter of a module type without a rule is
an error rather than a silent default. :func:`init_plan` lists them; :func:`init_weights` draws
the whole model, :func:`init_shards` one rank's shards of it, to the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from moelab.model.attention import Attention
from moelab.model.moe import Experts, MoeFFN
from moelab.model.positions import sinusoidal_table
from moelab.model.rms_norm import RMSNorm
from moelab.model.transformer import FeedForward, LanguageModel

Rule = tuple[str, float]  # ("uniform", bound) | ("normal", std) | ("const", value)
Claims = Iterator[tuple[nn.Parameter, Rule]]


def _residual_std(cfg) -> float:
    # GPT-2: a residual branch's output projection scaled by 1/sqrt(2 n_layers).
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


def _linear(m: nn.Linear, cfg, residual: bool = False) -> Claims:
    """fairseq: nn.Linear's own default, U(+-1/sqrt(fan_in)) for weight and bias.
    scaled_normal: N(0, init_std) (a residual output: the scaled std), bias 0."""
    if cfg.init == "fairseq":
        bound = 1 / math.sqrt(m.weight.shape[1])
        yield m.weight, ("uniform", bound)
        if m.bias is not None:
            yield m.bias, ("uniform", bound)
        return
    yield m.weight, ("normal", _residual_std(cfg) if residual else cfg.init_std)
    if m.bias is not None:
        yield m.bias, ("const", 0.0)


def _attention(m: Attention, cfg) -> Claims:
    """fairseq's MultiheadAttention.reset_parameters: q/k/v weights xavier (gain 1/sqrt(2)),
    out_proj xavier (gain 1) and its bias 0 (q/k/v biases: nn.Linear's rule). scaled_normal:
    out_proj is the residual output."""
    if cfg.init != "fairseq":
        yield from _linear(m.out_proj, cfg, residual=True)
        return
    for proj in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
        fan_out, fan_in = proj.weight.shape
        gain = 1.0 if proj is m.out_proj else 1 / math.sqrt(2)
        yield proj.weight, ("uniform", gain * math.sqrt(6.0 / (fan_in + fan_out)))
    if m.out_proj.bias is not None:
        yield m.out_proj.bias, ("const", 0.0)


def _feed_forward(m: FeedForward, cfg) -> Claims:
    """Linear layers; the second (``fc2`` / ``w2``, back to the residual stream) is the
    residual output under scaled_normal. The first ones take nn.Linear's rule below."""
    yield from _linear(m.fc2 if m.arch == "paper" else m.w2, cfg, residual=True)


def _experts(m: Experts, cfg) -> Claims:
    """Stacked (E, in, out) expert tensors: per expert exactly an nn.Linear(D, F) then
    nn.Linear(F, D) (fairseq: fan_in D for w1/w3/b1, F for w2/b2); scaled_normal: w2 is the
    residual output, biases 0."""
    fan_in = {"w1": m.w1.shape[1], "w3": m.w1.shape[1], "b1": m.w1.shape[1], "w2": m.w2.shape[1]}
    fan_in["b2"] = fan_in["w2"]
    for leaf, p in m.named_parameters(recurse=False):
        if cfg.init == "fairseq":
            yield p, ("uniform", 1 / math.sqrt(fan_in[leaf]))
        elif leaf in ("b1", "b2"):
            yield p, ("const", 0.0)
        else:
            yield p, ("normal", _residual_std(cfg) if p is m.w2 else cfg.init_std)


def _embedding(m: nn.Embedding, cfg) -> Claims:
    # fairseq's Embedding: N(0, D^-1/2); scaled_normal keeps that in the paper arch.
    paper_std = cfg.init == "fairseq" or cfg.arch == "paper"
    yield m.weight, ("normal", cfg.d_model**-0.5 if paper_std else cfg.init_std)


def _norm(m: nn.Module, cfg) -> Claims:
    yield m.weight, ("const", 1.0)
    if getattr(m, "bias", None) is not None:
        yield m.bias, ("const", 0.0)


# The init of every parameter, by the type of the module holding it. A module's rule may claim
# its children's parameters; an enclosing module's claim wins (modules are visited parent
# first), so _feed_forward sets the residual output and nn.Linear's rule the other layers.
# A parameter no rule claims is an error: a new module type adds its line here.
RULES: dict[type[nn.Module], Callable[[nn.Module, object], Claims]] = {
    Attention: _attention,
    FeedForward: _feed_forward,
    Experts: _experts,
    nn.Linear: _linear,
    nn.Embedding: _embedding,
    nn.LayerNorm: _norm,
    RMSNorm: _norm,
}


def init_plan(model: nn.Module, cfg) -> dict[str, tuple[tuple[int, ...], Rule]]:
    """name -> (shape, rule) for every parameter of ``model`` under ``cfg.init``, in parameter
    order (the order the generator is drawn in). Reads shapes only: works on the meta device."""
    if cfg.init not in ("fairseq", "scaled_normal"):
        raise ValueError(f"unknown init scheme {cfg.init!r}")  # ModelConfig.validate names them
    claimed: dict[int, Rule] = {}  # by id(parameter)
    for module in model.modules():
        rule = next((RULES[t] for t in type(module).__mro__ if t in RULES), None)
        if rule is not None:
            for p, r in rule(module, cfg):
                claimed.setdefault(id(p), r)
    plan = {}
    for name, p in model.named_parameters():
        if id(p) not in claimed:
            owner = model.get_submodule(name.rpartition(".")[0])
            raise ValueError(
                f"no init rule for {name} ({type(owner).__name__}): add one to "
                "moelab.model.init.RULES"
            )
        plan[name] = (tuple(p.shape), claimed[id(p)])
    return plan


def _draw(t: torch.Tensor, kind: str, scale: float, generator: torch.Generator | None) -> None:
    if kind == "uniform":
        t.uniform_(-scale, scale, generator=generator)
    elif kind == "normal":
        nn.init.normal_(t, 0.0, scale, generator=generator)
    else:
        t.fill_(scale)


def _zeroes_padding_row(cfg) -> bool:
    # fairseq's Embedding zeroes the padding row (moelab's tokenizers put <|pad|> at 1, fairseq's
    # dictionary too). The row still trains: moelab does not freeze it.
    return cfg.init == "fairseq" and 0 <= cfg.padding_idx < cfg.vocab_size


def init_weights(model: LanguageModel, generator: torch.Generator | None = None) -> None:
    """Initialise ``model`` in place by ``model.cfg.init`` (see the module docstring): every
    parameter in order, each drawn whole from ``generator``."""
    whole = {name: (p, (0,) * p.dim()) for name, p in model.named_parameters()}
    init_shards(model.cfg, init_plan(model, model.cfg), whole, generator)  # one shard: all


# Rows drawn at a time for the parts of a parameter another rank holds (bounded scratch).
_SCRATCH_ELEMENTS = 1 << 20


def init_shards(
    cfg,
    plan: dict[str, tuple[tuple[int, ...], Rule]],
    shards: dict[str, tuple[torch.Tensor, tuple[int, ...]]],
    generator: torch.Generator | None,
) -> None:
    """Initialise one rank's shards of a model so that they equal the same slices of
    :func:`init_weights` on the whole model, at any sharding (one process or many, any
    expert-parallel degree).

    ``plan``: :func:`init_plan` of the whole model (every parameter's full shape and rule, in
    the order the generator is drawn in); ``shards``: name -> (this rank's local tensor, its
    offset in the full tensor). Every rank draws the whole random stream in that order, but
    only ever holds its own shard plus a bounded scratch: rows of a parameter before and after
    its shard are drawn in blocks and dropped. That is the same stream because uniform draws
    are one per element in order, and torch's CPU normal fills blocks of 16 from uniform draws
    in order (so blocks of whole rows of a multiple of 16 elements draw the same); other normal
    tensors (1-D, odd rows) are drawn whole and sliced."""
    with torch.no_grad():
        for name, (shape, (kind, scale)) in plan.items():
            local, offset = shards[name]
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
    """Set the model's buffers to their initial values, for a model materialised with
    ``to_empty`` (which leaves them uninitialised): the paper arch's sinusoidal position table;
    an MoE layer's selection bias and its load counts (``balance: bias``) start at zero (a
    checkpoint then loads the bias it trained)."""
    cfg = model.cfg
    if cfg.arch == "paper":
        rows = model.pos_table.shape[0]
        model.pos_table = sinusoidal_table(rows, cfg.d_model, cfg.padding_idx).to(device)
    for m in model.modules():
        if isinstance(m, MoeFFN) and m.score_bias is not None:
            m.score_bias.zero_()
            m.load_E.zero_()
