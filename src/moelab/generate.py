"""Sample text from a trained model with its KV cache: temperature, top-k and top-p (nucleus).

Each new token costs one forward pass over that token only; the keys and values of the prompt
and of earlier tokens come from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelab.config import from_dict
from moelab.devices import pick_device
from moelab.errors import MoelabError
from moelab.model import KVCache


@dataclass(frozen=True)
class Sampling:
    """How :func:`sample` draws tokens: the one set of defaults (``moelab generate``'s too)."""

    max_new_tokens: int = 100  # new tokens
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k likeliest (0 = all)
    top_p: float = 1.0  # nucleus mass (1.0 = all)
    seed: int = 0  # the same seed gives the same tokens

    def validate(self) -> Sampling:
        for key, ok, rule in (
            ("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
        ):
            if not ok:
                raise MoelabError(f"{{key}} must be {rule}, got {getattr(self, key)}", key)
        return self


def filter_logits(logits_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p probability mass to -inf."""
    if top_k > 0 and top_k < logits_V.numel():
        kth = torch.topk(logits_V, top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_V, order_V = torch.sort(logits_V, descending=True)
        cum_V = torch.softmax(sorted_V, -1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop_sorted = (cum_V - torch.softmax(sorted_V, -1)) >= top_p
        drop_V = torch.zeros_like(drop_sorted).scatter(0, order_V, drop_sorted)
        logits_V = logits_V.masked_fill(drop_V, float("-inf"))
    return logits_V


def draw(
    logits_BV: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator
) -> torch.Tensor:
    """Each row's next token: the argmax at temperature 0, else a draw from the filtered
    distribution (one ``gen`` stream; a row draws as it would alone)."""
    if temperature <= 0:
        return logits_BV.argmax(-1)
    rows = [filter_logits(row / temperature, top_k, top_p) for row in logits_BV]
    return torch.multinomial(torch.softmax(torch.stack(rows), -1), 1, generator=gen)[:, 0]


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt_ids: list[int],
    settings: Sampling | None = None,
    *,
    stop_id: int | None = None,
    **options: Any,
) -> list[int]:
    """New token ids after ``prompt_ids`` (at least one id), drawn as ``settings`` (or the
    :class:`Sampling` fields as keywords: ``temperature=0``) say."""
    s = (settings or from_dict(Sampling, options)).validate()
    if not prompt_ids:
        raise MoelabError("generate: the prompt is empty after tokenisation")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    cache = KVCache()
    tokens_BT = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out: list[int] = []
    for _ in range(s.max_new_tokens):
        logits_1V = model(tokens_BT, kv_cache=cache, last_only=True).logits_BTV[:, -1]
        next_id = int(draw(logits_1V.float().cpu(), s.temperature, s.top_k, s.top_p, gen)[0])
        if stop_id is not None and next_id == stop_id:
            break
        out.append(next_id)
        tokens_BT = torch.tensor([[next_id]], dtype=torch.long, device=device)
    return out


def generate_text(
    run_dir: str | Path,
    prompt: str,
    settings: Sampling | None = None,
    *,
    step: int | None = None,
    device: str = "cpu",
    on_loaded: Callable[[dict], object] | None = None,
    **options: Any,
) -> str:
    """Load a run's newest valid checkpoint and its tokenizer, continue ``prompt`` as
    ``settings`` (or the :class:`Sampling` fields as keywords) say; returns the continuation
    only. Generation stops at the end-of-document token. ``on_loaded`` receives the loaded
    checkpoint's meta (its ``step``), so a caller can say which step it used."""
    from moelab.data.tokenizer import eot_token_id, load_tokenizer
    from moelab.train import load_model

    settings = (settings or from_dict(Sampling, options)).validate()
    run_dir = Path(run_dir)
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise MoelabError(f"{run_dir}: no tokenizer.json; is it a moelab run folder?")
    dev = pick_device(device, "device")
    tok = load_tokenizer(tok_path)
    model, cfg, meta = load_model(run_dir, step=step, device=dev)
    tok_vocab = tok.get_vocab_size(with_added_tokens=True)
    if tok_vocab > cfg.model.vocab_size:
        raise MoelabError(
            f"{tok_path} has vocab {tok_vocab} but the model was trained with "
            f"{cfg.model.vocab_size} (another tokenizer); put back the tokenizer.json of the "
            "data the run was trained on"
        )
    if on_loaded is not None:
        on_loaded(meta)
    eot = eot_token_id(tok)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    # Training documents follow an end-of-document token: start the prompt the same way.
    prompt_ids = ([eot] if eot is not None else []) + ids
    new_ids = sample(model, prompt_ids, settings, stop_id=eot)
    return tok.decode(new_ids, skip_special_tokens=True)
