"""Byte-level BPE: train one with Hugging Face ``tokenizers`` or load a user's ``tokenizer.json``,
and encode documents in batches across worker processes.

Special tokens, round-trip and boundary safety: docs/data.md, "The prepared folder" (Tokenizer).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moelab.errors import MoelabError

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOT_TOKEN, PAD_TOKEN)
# Names other tokenizers use, tried in order when loading a user's tokenizer.json.
# The one list of end-of-document token names (data, eval, generate and interop all use it
# through eot_token_id / special_ids, so they agree on every tokenizer); first match wins.
# Names added later go at the end, so folders prepared before keep the id they recorded.
EOT_CANDIDATES = (
    EOT_TOKEN,
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|eot_id|>",
    "[SEP]",
    "<eot>",
    "[EOS]",
)
PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
BATCH_CHARS = 1 << 20  # ~1 MB of text per encode task: big enough to amortise the round trip


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB:
        raise MoelabError(
            f"{{key}} {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)",
            key="vocab_size",
        )


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (fewer if the text has too few distinct
    pairs), trained on ``texts``; deterministic for the same texts in the same order."""
    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise MoelabError(f"tokenizer file {path} does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for bad JSON
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MoelabError(
            f"{path} is not a valid tokenizer.json ({detail}); restore it or re-create it with "
            "moelab prepare"
        ) from None
    tok.encode_special_tokens = True
    return tok


def eot_token_id(tok: Any, default: int | None = None) -> int | None:
    """The end-of-document id (the first of EOT_CANDIDATES the tokenizer has), else ``default``
    (evaluation passes 0: an empty prompt's context still needs an id). An object without
    ``token_to_id`` has none."""
    find = getattr(tok, "token_to_id", None)
    ids = (find(name) for name in EOT_CANDIDATES) if find is not None else iter(())
    found = next((i for i in ids if i is not None), None)
    return default if found is None else int(found)


def special_ids(tok: Tokenizer, where: str = "tokenizer") -> tuple[int, int]:
    """(eot_id, pad_id). A tokenizer without a padding token pads with its end-of-document token;
    padded positions are always masked out, so the choice does not change any loss."""
    eot = eot_token_id(tok)
    if eot is None:
        raise MoelabError(
            f"{where} has no end-of-document token (one of {', '.join(EOT_CANDIDATES)}); "
            "add one as a special token or let moelab train a tokenizer"
        )
    pad = next((tok.token_to_id(t) for t in PAD_CANDIDATES if tok.token_to_id(t) is not None), eot)
    return eot, pad


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Encoding in worker processes

_worker_tok: Tokenizer | None = None
_worker_dtype: np.dtype = np.dtype(np.uint32)
_worker_cut = False

# Tokenizers is slower per byte on long documents than on short texts, so documents are cut
# into ~1 KB pieces, encoded, and the ids concatenated. The cut is placed only where the
# GPT-2-style byte-level pre-tokenizer splits anyway: after a single "\n" that sits between two
# non-space characters. Such a "\n" is a pre-token of its own whether or not the text continues,
# and BPE never merges across pre-tokens, so the ids are exactly those of the whole document.
CUT_AT = re.compile(r"(?<=\S\n)(?=\S)")
PIECE_CHARS = 1024


def can_cut_documents(tok: Tokenizer) -> bool:
    """True when cutting at CUT_AT cannot change the ids: no normalizer, and a byte-level
    pre-tokenizer with the GPT-2 regex and no added prefix space (ours and GPT-2's)."""
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
    )


def cut_document(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    pieces, start = [], 0
    for m in CUT_AT.finditer(text):
        if m.start() - start >= piece_chars:
            pieces.append(text[start : m.start()])
            start = m.start()
    pieces.append(text[start:])
    return pieces


def _init_worker(tokenizer_json: str, dtype: str) -> None:
    global _worker_tok, _worker_dtype, _worker_cut
    # One thread per process: parallelism comes from the processes, not from rayon inside each.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tok = Tokenizer.from_str(tokenizer_json)
    _worker_tok.encode_special_tokens = True
    _worker_dtype = np.dtype(dtype)
    _worker_cut = can_cut_documents(_worker_tok)


def _encode_batch(docs: Sequence[str]) -> list[np.ndarray]:
    assert _worker_tok is not None
    tok = _worker_tok
    # encode_batch_fast skips character offsets, which we never use (faster)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    if not _worker_cut:
        return [np.asarray(e.ids, dtype=_worker_dtype) for e in encode(list(docs), False)]
    pieces_per_doc = [cut_document(d) for d in docs]
    encs = encode([p for pieces in pieces_per_doc for p in pieces], False)
    out, i = [], 0
    for pieces in pieces_per_doc:
        ids = [encs[j].ids for j in range(i, i + len(pieces))]
        i += len(pieces)
        out.append(np.asarray([t for part in ids for t in part], dtype=_worker_dtype))
    return out


def batches_by_chars(docs: Sequence[str], max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver: workers start clean (no torch, no rayon threads inherited from training the
    # BPE in this process) and cheaply; spawn where it does not exist.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class DocumentEncoder:
    """Encodes documents in ~1 MB batches, in ``workers`` processes (started once, on first
    use, and stopped on exit). Results come back in order and do not depend on ``workers``."""

    def __init__(self, tok: Tokenizer, workers: int = 1):
        self._json = tok.to_str()
        self._dtype = token_dtype(tok.get_vocab_size(with_added_tokens=True))
        self.workers = workers
        self._pool: multiprocessing.pool.Pool | None = None
        self._parallelism: str | None = None  # the caller's setting, restored on exit

    def __enter__(self) -> DocumentEncoder:
        # no rayon threads inside the tokenizer, here or in workers: one process = one core
        self._parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self._parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self._parallelism

    def encode(
        self, docs: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        """Token ids of every document (no end-of-document tokens); ``on_batch(n_chars)``
        reports progress."""
        # ~1 MB batches, but at least 4 per worker so that small domains are spread too
        total = sum(len(d) for d in docs)
        batch_chars = max(1, min(BATCH_CHARS, total // (4 * self.workers)))
        batches = list(batches_by_chars(docs, batch_chars))
        if self.workers <= 1 or len(batches) <= 1:
            _init_worker(self._json, self._dtype.str)
            results: Iterable[list[np.ndarray]] = map(_encode_batch, batches)
        else:
            if self._pool is None:
                self._pool = _pool_context().Pool(
                    self.workers, initializer=_init_worker, initargs=(self._json, self._dtype.str)
                )
            results = self._pool.imap(_encode_batch, batches)
        out: list[np.ndarray] = []
        for batch, res in zip(batches, results):
            out.extend(res)
            if on_batch:
                on_batch(sum(len(d) for d in batch))
        return out
