"""Perplexity per domain: loss in nats per token, perplexity and bits per byte.

Windows, stride and bits per byte: docs/evaluation.md, "Perplexity per domain".
"""

from __future__ import annotations

import glob as globlib
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moelab.data.globbing import expand
from moelab.data.shards import PreparedData
from moelab.data.tokenizer import eot_token_id
from moelab.errors import MoelabError, check_at_least_one
from moelab.eval.runs import capacity_report, forward_flops, open_run
from moelab.eval.scoring import ForwardStats, LogitsAt, model_logits_at
from moelab.eval.text_source import probe_text, read_tokens
from moelab.progress import progress_bar
from moelab.train.validation import evaluation_state, summed_nll

IN_DOMAIN, OUT_OF_DOMAIN = "in-domain", "out-of-domain"
BATCH_SIZE = 8  # windows per forward


@dataclass
class PplSource:
    """One text to score: its token ids, the UTF-8 bytes they decode to, and its role."""

    name: str
    tokens: np.ndarray
    n_bytes: int
    role: str  # IN_DOMAIN or OUT_OF_DOMAIN
    origin: str  # where it came from (file or prepared folder)


def iter_windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """``(start, end, first_scored)``: the window's inputs are tokens[start:end], its targets
    tokens[start+1:end+1], and targets at index >= first_scored are scored. A generator: a long
    text's windows are never all held (a tuple each, ~150 bytes, grew with the file)."""
    if not 1 <= stride <= context:
        raise MoelabError(
            f"{{key}} must be between 1 and the context {context}, got {stride}", key="stride"
        )
    scored_until, start = 1, 0
    while scored_until < n_tokens:
        end = min(start + context, n_tokens - 1)
        if end + 1 > scored_until:
            yield start, end, scored_until
            scored_until = end + 1
        start += stride


def check_options(
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_tokens: int | None = None,
) -> None:
    """Refuse a bad perplexity option in one line, before any work."""
    check_at_least_one(context=context, stride=stride, batch_size=batch_size, max_tokens=max_tokens)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)  # islice on a list would restart at its first item every time
    while batch := list(itertools.islice(items, size)):
        yield batch


def source_loss(
    tokens: np.ndarray,
    logits_at: LogitsAt,
    *,
    context: int,
    stride: int,
    batch_size: int,
    device: torch.device | str,
    pad_id: int = 0,
    stats: ForwardStats | None = None,
    advance=None,
) -> tuple[float, int]:
    """(sum of negative log-likelihoods in nats, number of scored tokens)."""

    def batch_nll(batch: list[tuple[int, int, int]]) -> tuple[torch.Tensor, int]:
        T = max(end - start for start, end, _ in batch)
        tokens_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
        rows, positions, targets = [], [], []
        for b, (start, end, first) in enumerate(batch):
            tokens_BT[b, : end - start] = torch.from_numpy(
                np.asarray(tokens[start:end], dtype=np.int64)
            )
            # target index t (first..end) is predicted at input position t - 1 - start
            rows += [b] * (end + 1 - first)
            positions += range(first - 1 - start, end - start)
            targets.append(np.asarray(tokens[first : end + 1], dtype=np.int64))
        logits_NV = logits_at(
            tokens_BT.to(device),
            torch.tensor(rows, device=device),
            torch.tensor(positions, device=device),
        )
        target_N = torch.from_numpy(np.concatenate(targets)).to(logits_NV.device)
        nll = torch.nn.functional.cross_entropy(logits_NV.float(), target_N, reduction="sum")
        if stats is not None:
            stats.batches += 1
            stats.sequences += len(batch)
            stats.tokens += sum(end - start for start, end, _ in batch)
            stats.padded_tokens += len(batch) * T
        if advance is not None:
            advance(len(batch))
        return nll, int(target_N.numel())

    with torch.inference_mode():
        windows_ = _batched(iter_windows(len(tokens), context, stride), batch_size)
        return summed_nll(windows_, batch_nll)


def evaluate_perplexity(
    model: torch.nn.Module,
    sources: list[PplSource],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    pad_id: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of ``model`` on every source, each reported apart.
    ``context`` defaults to the model's maximum, ``stride`` to ``context`` (no overlap)."""
    check_options(context, stride, batch_size)
    context = context or model.cfg.max_seq_len
    if context > model.cfg.max_seq_len:
        raise MoelabError(
            f"{{key}} {context} exceeds the model's {model.cfg.max_seq_len}", key="context"
        )
    stride = stride or context
    device = device if device is not None else next(model.parameters()).device
    rows = []
    t0 = time.perf_counter()
    stats = ForwardStats()
    logits_at = model_logits_at(model, stats)
    with evaluation_state(model):
        for src in sources:
            if len(src.tokens) < 2:
                raise MoelabError(
                    f"{src.name} ({src.origin}): fewer than 2 tokens, nothing to score"
                )
            n_windows = sum(1 for _ in iter_windows(len(src.tokens), context, stride))
            t_src = time.perf_counter()
            with progress_bar(n_windows, f"ppl {src.name}", progress) as advance:
                nll, count = source_loss(
                    src.tokens,
                    logits_at,
                    context=context,
                    stride=stride,
                    batch_size=batch_size,
                    device=device,
                    pad_id=pad_id,
                    stats=stats,
                    advance=advance,
                )
            loss = nll / count
            rows.append(
                {
                    "name": src.name,
                    "role": src.role,
                    "origin": src.origin,
                    "tokens": count,
                    "bytes": src.n_bytes,
                    "loss": loss,
                    "perplexity": math.exp(min(loss, 700.0)),
                    "bits_per_byte": nll / math.log(2) / src.n_bytes if src.n_bytes else None,
                    "seconds": time.perf_counter() - t_src,
                }
            )
    return {
        "kind": "perplexity",
        "mode": "sliding" if stride < context else "non-overlapping",
        "context": context,
        "stride": stride,
        "domains": rows,
        "compute": {
            "seconds": time.perf_counter() - t0,
            "forward_tokens": stats.tokens,
            "forward_flops_estimate": forward_flops(model, stats.tokens, stats.sequences),
            "padded_tokens": stats.padded_tokens,
            "batches": stats.batches,
            "moe_capacity_last_batch": stats.capacity,
            "moe_max_dropped_frac": stats.max_dropped_frac,
        },
    }


# --- where the text comes from ----------------------------------------------------------------


def _decoded_bytes(tokenizer: Any, tokens: np.ndarray, eot_id: int) -> int:
    """UTF-8 bytes of the text the tokens decode to (end-of-document tokens excluded). Decoded
    per document so multi-byte characters are never cut."""
    ends = np.flatnonzero(np.asarray(tokens) == eot_id)
    total, start = 0, 0
    bounds = [*ends.tolist(), len(tokens)]
    for end in bounds:
        if end > start:
            piece = tokens[start:end].tolist()
            total += len(tokenizer.decode(piece, skip_special_tokens=True).encode("utf-8"))
        start = end + 1
    return total


def sources_from_prepared(
    data: Any,
    train_domains: set[str] | None,
    max_tokens: int | None = None,
    origin: str | None = None,
) -> list[PplSource]:
    """Every domain's validation split of a :class:`moelab.data.PreparedData`. A domain is
    in-domain when it is in ``train_domains`` (the run's training mixture)."""
    out = []
    for domain in data.domains:
        if "val" not in data.splits(domain):
            continue
        tokens = np.asarray(data.tokens(domain, "val"))[:max_tokens]
        if len(tokens) < 2:
            continue
        role = IN_DOMAIN if train_domains and domain in train_domains else OUT_OF_DOMAIN
        n_bytes = _decoded_bytes(data.tokenizer, tokens, data.eot_id)
        out.append(PplSource(domain, tokens, n_bytes, role, origin or str(data.path)))
    if not out:
        raise MoelabError(f"{data.path}: no domain has a validation split with tokens")
    return out


def expand_paths(paths: list[str]) -> list[Path]:
    """Files and prepared folders named directly or by glob, in a stable order."""
    out: list[Path] = []
    for p in paths:
        # an existing path is literal (file[1].txt); ** never enters a symlinked folder
        matches = expand(p) if globlib.has_magic(p) else [p]
        if not matches:
            raise MoelabError(f"{{key}} {p}: no file matches this pattern", key="paths")
        for m in matches:
            path = Path(m)
            if not path.exists():
                raise MoelabError(f"{{key}} {m}: no such file or folder", key="paths")
            if path.is_dir() and not (path / "manifest.json").is_file():
                raise MoelabError(
                    f"{{key}} {m}: a folder must be prepared data (with manifest.json); "
                    "pass text files or a glob such as DIR/*.txt",
                    key="paths",
                )
            out.append(path)
    return out


def check_inputs(paths: list[str]) -> None:
    """Open every ``--ppl`` path far enough to refuse bad input before a model is loaded: a text
    file's first block (binary, unreadable), a prepared folder's manifest, files and validation
    token ids (:mod:`moelab.data.folder_checks`)."""

    for path in expand_paths(paths):
        if not path.is_dir():
            probe_text(path)
            continue
        data = PreparedData.open(path, verify=False)
        for domain in data.domains:
            if "val" in data.splits(domain):
                data.tokens(domain, "val")  # range-checks its ids once


def source_from_text(path: Path, tokenizer: Any, max_tokens: int | None = None) -> PplSource:
    """A text file, tokenized with the run's tokenizer in pieces (:mod:`moelab.eval.text_source`:
    memory does not grow with the file; reading stops at ``max_tokens``). UTF-8, or Latin-1
    when the file is not UTF-8 (several classic corpora are)."""

    try:
        tokens, n_bytes = read_tokens(path, tokenizer, max_tokens)
    except UnicodeDecodeError:  # only tokenizing is repeated: nothing was scored yet
        tokens, n_bytes = read_tokens(path, tokenizer, max_tokens, encoding="latin-1")
    return PplSource(path.name, tokens, n_bytes, OUT_OF_DOMAIN, str(path))


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def run_perplexity(
    run_dir: str | Path,
    paths: list[str] | None = None,
    *,
    step: int | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_tokens: int | None = None,
    capacity_factor: float | None = None,
    device: str | None = None,
    progress: bool = False,
    opened=None,
) -> dict[str, Any]:
    """Perplexity of a run on every validation domain of its data (no ``paths``) or on the
    named text files, globs and prepared folders. MoE layers are dropless unless
    ``capacity_factor`` is given. ``max_tokens`` caps the tokens scored per source."""

    check_options(context, stride, batch_size, max_tokens)
    run = opened or open_run(run_dir, step=step, device=device)
    run_data_dir = Path(run.run_cfg.data.dir)
    sources: list[PplSource] = []
    run_tok = run.run_dir / "tokenizer.json"
    if not paths:
        data = PreparedData.open(run_data_dir, verify=False)
        if run_tok.is_file() and not _same_file(run_data_dir / "tokenizer.json", run_tok):
            raise MoelabError(
                f"the run's data folder {run_data_dir} now holds another tokenizer than the run "
                "was trained with; pass the text files as {key} (tokenized with the run's)",
                key="paths",
            )
        sources = sources_from_prepared(data, set(data.train_domains), max_tokens)
    else:
        for path in expand_paths(paths):
            if path.is_dir():
                data = PreparedData.open(path, verify=False)
                if not _same_file(path / "tokenizer.json", run_tok):
                    raise MoelabError(
                        f"{{key}} {path}: prepared with a different tokenizer than the run; "
                        "pass the text files instead so they are tokenized with the run's",
                        key="paths",
                    )
                same = path.resolve() == run_data_dir.resolve()
                roles = set(data.train_domains) if same else set()
                sources += sources_from_prepared(data, roles, max_tokens, str(path))
            else:
                sources.append(source_from_text(path, run.tokenizer, max_tokens))
    # The capacity asked for here holds for this call only: the model (which the caller may go
    # on evaluating, as a study does) gets its own factors back afterwards.
    with evaluation_state(run.model, capacity_factor):
        result = evaluate_perplexity(
            run.model,
            sources,
            context=context,
            stride=stride,
            batch_size=batch_size,
            pad_id=eot_token_id(run.tokenizer, default=0),
            progress=progress,
        )
        result["capacity"] = capacity_report(run.model)
    result["run_dir"] = str(run.run_dir)
    result["checkpoint"] = run.checkpoint
    result["max_tokens"] = max_tokens
    result["paths"] = list(paths or [])
    return result
