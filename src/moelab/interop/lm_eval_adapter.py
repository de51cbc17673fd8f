"""lm-evaluation-harness over any moelab run (the paper's MoE too): ``MoelabLM``, registered
as model ``moelab``. docs/interop.md (*lm-evaluation-harness*) is the one account of its use
from Python and the command line (``python -m moelab.interop.lm_eval_adapter`` is the harness's
CLI with the model registered: lm-eval 0.4.x discovers no models from other packages), of its
``model_args`` and of what each request type does: the harness's own tokenization
(``TemplateLM``), scored by :func:`moelab.eval.scoring.score_requests`; MoE layers dropless
unless ``capacity_factor`` is given.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from moelab.data.tokenizer import eot_token_id
from moelab.devices import pick_device
from moelab.errors import MoelabError
from moelab.eval.logprobs import BATCH_TOKENS
from moelab.eval.runs import open_run, parse_capacity
from moelab.eval.scoring import Request, model_logits_at, score_requests
from moelab.model import KVCache
from moelab.train.validation import set_capacity

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64  # sequences per forward when the harness says "auto"


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise MoelabError(f"batch_size={value!r}: expected an integer or 'auto'") from None
    if size < 1:
        raise MoelabError(f"batch_size must be >= 1, got {size}")
    return size


def _usable_device(device: str | None) -> str | None:
    """The harness's CLI asks for cuda:0 by default; like its HF backend, fall back to the CPU
    when there is no GPU instead of failing."""
    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning(f"MoelabLM: device {device!r} requested but CUDA is unavailable; using cpu")
        return "cpu"
    return device


class MoelabLM(TemplateLM):
    """The harness's ``LM`` interface over a moelab run folder, or over ``model`` and
    ``tokenizer`` (a ``LanguageModel`` and a ``tokenizers.Tokenizer``) for in-memory use; every
    argument, also accepted as ``--model_args key=value``, is described in docs/interop.md."""

    def __init__(
        self,
        run_dir: str | None = None,
        *,
        step: int | None = None,
        device: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH,
        max_batch_size: int | None = None,
        batch_tokens: int = BATCH_TOKENS,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        capacity_factor: float | str | None = None,
        seed: int = 1234,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        device = _usable_device(device)
        if model is None:
            if run_dir is None:
                raise MoelabError("MoelabLM needs run_dir=RUN_DIR (or model= and tokenizer=)")
            opened = open_run(Path(run_dir), step=step, device=device)
            model, tokenizer = opened.model, opened.tokenizer
            self.run_dir: Path | None = opened.run_dir
        else:
            if tokenizer is None:
                raise MoelabError("MoelabLM(model=...) also needs tokenizer=")
            self.run_dir = None
            model = model.to(pick_device(device, "device"))
        self.model = model.eval()
        set_capacity(self.model, eval_factor=parse_capacity(capacity_factor))
        self.tokenizer = tokenizer
        self._device = next(self.model.parameters()).device
        self._eot = eot_token_id(tokenizer, default=0)
        # What the harness reads besides the properties below.
        self.max_length = int(max_length) if max_length else int(self.model.cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = _batch_size(batch_size)
        if max_batch_size is not None:
            self.batch_size = min(self.batch_size, _batch_size(max_batch_size))
        self._batch_tokens = int(batch_tokens)
        self._seed = int(seed)
        self._logits_at = model_logits_at(self.model)

    # -- what the harness reads ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._eot  # moelab's documents follow an end-of-text token

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.run_dir or "moelab")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        # moelab tokenizers add nothing; special-token strings in text are plain text.
        return list(self.tokenizer.encode(string, add_special_tokens=False).ids)

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- scoring ---------------------------------------------------------------------------

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probs, greedy?) of each continuation after its context, batched."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        todo, reqs = [], []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:  # nothing to score (a tokenizer merge ate the continuation)
                out[i] = (0.0, True)
                continue
            todo.append(i)
            reqs.append(Request(tuple(ctx), tuple(cont)))
        scored = score_requests(
            reqs,
            self._logits_at,
            max_len=self.max_length,
            device=self._device,
            batch_tokens=max(self._batch_tokens, self.max_length),
            max_batch=self.batch_size,
            pad_id=self._eot,
        )
        for i, s in zip(todo, scored):
            out[i] = (float(s.logprobs.sum()), bool(s.greedy))
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
        results = self._score([(list(ctx), list(cont)) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents in disjoint windows of ``max_length`` tokens, each
        predicted token seeing as much earlier context as fits (the harness's definition)."""
        windows, owner = [], []
        for r, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((ctx, cont))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, self._score(windows)):
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with ``do_sample``, temperature/top-k/top-p) continuation of each
        context until a stop string, the end-of-text token or ``max_gen_toks``. Requests whose
        prompts have the same length and settings decode together in one batch (the model has
        no padding mask, so only equal lengths share a batch)."""
        eos = self.tokenizer.id_to_token(self._eot)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
            until = list(kw.get("until") or [])
            if eos and eos not in until:
                until.append(eos)
            n_new = int(kw["max_gen_toks"])
            ids = self.tok_encode(context)[-max(self.max_length - n_new, 1) :] or [self._eot]
            key = (
                len(ids),
                n_new,
                tuple(until),
                bool(kw.get("do_sample")),
                float(kw.get("temperature", 0.0)),
                int(kw.get("top_k", 0) or 0),
                float(kw.get("top_p", 1.0) or 1.0),
            )
            groups.setdefault(key, []).append((i, ids))
        results: list[str] = [""] * len(requests)
        for key, members in groups.items():
            _, n_new, until, do_sample, temperature, top_k, top_p = key
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                texts = self._decode_batch(
                    [ids for _, ids in chunk],
                    n_new,
                    list(until),
                    temperature if do_sample else 0.0,
                    top_k,
                    top_p,
                )
                for (i, _), text in zip(chunk, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    @torch.inference_mode()
    def _decode_batch(
        self,
        prompts: list[list[int]],
        n_new: int,
        until: list[str],
        temperature: float,
        top_k: int,
        top_p: float,
    ) -> list[str]:
        from moelab.generate import draw

        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        cache = KVCache()
        tokens_BT = torch.tensor(prompts, dtype=torch.long, device=self._device)
        new_ids: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(n_new):
            logits_BV = self.model(tokens_BT, kv_cache=cache, last_only=True).logits_BTV[:, -1]
            next_B = draw(logits_BV.float().cpu(), temperature, top_k, top_p, gen)
            for b, t in enumerate(next_B.tolist()):
                if done[b]:
                    continue
                if t == self._eot:
                    done[b] = True
                    continue
                new_ids[b].append(t)
                text = self.tok_decode(new_ids[b])
                if any(s and s in text for s in until):
                    done[b] = True
            if all(done):
                break
            tokens_BT = next_B[:, None].to(self._device)
        texts = []
        for ids in new_ids:
            text = self.tok_decode(ids)
            for s in until:
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts


# Registered by import path, not by class object: running this file as ``python -m`` (where the
# class lives in ``__main__``) and importing it normally then register the very same target.
REGISTRY_NAME = "moelab"
model_registry.register(REGISTRY_NAME, target="moelab.interop.lm_eval_adapter:MoelabLM")


def main(argv: list[str] | None = None) -> None:
    """The harness's command line with the ``moelab`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
