"""A text file as token ids for perplexity, read and tokenized in pieces.

Whole-file tokenizing cost ~180 bytes per input byte; here memory is a few MB plus 2 or 4 bytes
per kept token. Where pieces are cut and why the ids stay exact: docs/evaluation.md,
"Perplexity per domain".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moelab.data.textfile import iter_text
from moelab.data.tokenizer import CUT_AT, can_cut_documents, token_dtype

PIECE_CHARS = 1 << 16
BEFORE_SPACE = re.compile(r"(?<=\S)(?= \S)")


def _cut(text: str, piece_chars: int) -> int:
    """Where to end a piece of ``text`` (0: keep reading, no safe cut in sight)."""
    for rule in (CUT_AT, BEFORE_SPACE):
        last = 0
        for m in rule.finditer(text, 0, len(text) - 1):
            last = m.start()
        if last > 0:
            return last
    return len(text) if len(text) >= 4 * piece_chars else 0


def pieces(chunks: Iterator[str], piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Re-cut a stream of text into pieces of at least ``piece_chars`` characters (except the
    last) that end at safe tokenizer boundaries; ``"".join`` of them is the stream's text."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        while len(pending) >= piece_chars:
            end = _cut(pending, piece_chars)
            if not end:
                break
            yield pending[:end]
            pending = pending[end:]
    if pending:
        yield pending


def read_tokens(
    path: Path,
    tokenizer: Any,
    max_tokens: int | None = None,
    encoding: str = "utf-8",
    piece_chars: int = PIECE_CHARS,
) -> tuple[np.ndarray, int]:
    """(token ids, UTF-8 bytes of the text they encode) of the file's first ``max_tokens``
    tokens (all when None). Raises UnicodeDecodeError when ``encoding`` does not fit."""
    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    if not can_cut_documents(tokenizer):
        piece_chars = 1 << 62  # never cut: one piece, the ids of the whole text
    parts: list[np.ndarray] = []
    n_tokens = n_bytes = 0
    for piece in pieces(iter_text(path, encoding), piece_chars):
        ids = tokenizer.encode(piece, add_special_tokens=False).ids
        if max_tokens is not None and n_tokens + len(ids) >= max_tokens:
            ids = ids[: max_tokens - n_tokens]
            # the bytes of what is kept: decoding gives back the text byte for byte
            n_bytes += len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
            parts.append(np.asarray(ids, dtype=dtype))
            n_tokens += len(ids)
            break  # stop reading: the rest of the file is never decoded
        n_bytes += len(piece.encode("utf-8"))
        parts.append(np.asarray(ids, dtype=dtype))
        n_tokens += len(ids)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return tokens, n_bytes


def probe_text(path: Path) -> None:
    """Read the file's first block the way :func:`read_tokens` will, so that an unreadable,
    binary or (visibly) damaged file is refused before the model is loaded."""
    next(iter_text(path, "latin-1"), None)  # Latin-1 decodes any byte: only reading can fail
