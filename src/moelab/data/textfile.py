"""Reading a text file's bytes the one way moelab does (``prepare`` and ``eval --ppl``):
.gz/.bz2/.xz decompressed on the fly, a binary file refused before it is decoded, a damaged
archive or an unreadable file named in one line; whole (:func:`read_bytes`) or as a stream of
decoded text in constant memory (:func:`iter_text`); and the one JSON-lines parser
(:func:`json_lines`: ``prepare``'s JSONL sources and the eval task files)."""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from moelab.errors import MoelabError

COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# damaged compressed streams raise these (gzip.BadGzipFile is an OSError)
_CORRUPT = (EOFError, lzma.LZMAError, zlib.error)
BINARY_PROBE = 8192  # bytes looked at for a NUL, as git and grep do


def open_raw(path: Path) -> BinaryIO:
    """The file's bytes as a stream, .gz/.bz2/.xz decompressed on the fly."""
    return COMPRESSED.get(path.suffix, open)(path, "rb")


def _nul_is_text(encoding: str | None) -> bool:
    """UTF-16 and UTF-32 text is full of NUL bytes; every other encoding we accept is not."""
    return any(
        e.strip().lower().replace("_", "-").startswith(("utf-16", "utf-32"))
        for e in (encoding or "utf-8").split(",")
    )


_WIDE_BOMS = (  # longest first: UTF-32-LE's mark starts with UTF-16-LE's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def refuse_binary(head: bytes, path: Path, encoding: str | None = None) -> None:
    """A NUL byte near the start means a binary file (or a compressed one without its suffix):
    decoding it would give a meaningless text, and a meaningless perplexity or tokenizer.
    UTF-16/32 text has NULs too: with its byte-order mark it is named as such."""
    if b"\0" not in head[:BINARY_PROBE] or _nul_is_text(encoding):
        return
    wide = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if wide:
        raise MoelabError(
            f"{path} is not valid {encoding or 'utf-8'}: it is {wide} text (byte-order mark); "
            f"give its encoding (prepare: DOMAIN=PATH:encoding={wide.lower()}) or convert it "
            "to UTF-8"
        )
    raise MoelabError(
        f"{path} is not valid {encoding or 'utf-8'} text: it looks binary (a NUL byte in its "
        f"first {BINARY_PROBE} bytes); give a text file (compressed ones need their .gz, .bz2 "
        "or .xz suffix)"
    )


def _read_error(path: Path, e: Exception) -> MoelabError:
    if isinstance(e, _CORRUPT) or isinstance(e, gzip.BadGzipFile):
        return MoelabError(
            f"cannot read {path}: truncated or corrupt ({e}); re-download or re-compress it"
        )
    return MoelabError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}")


def read_bytes(path: Path, encoding: str | None = None) -> bytes:
    """Raw bytes of a text file, decompressing .gz/.bz2/.xz transparently; a binary file is
    refused (see :func:`refuse_binary`)."""
    try:
        with open_raw(path) as f:
            raw = f.read()
    except (*_CORRUPT, OSError) as e:
        raise _read_error(path, e) from None
    refuse_binary(raw, path, encoding)
    return raw


def iter_text(path: Path, encoding: str, block: int = 1 << 16) -> Iterator[str]:
    """The decoded text of a file in pieces of about ``block`` bytes, with the rules of
    ``moelab.data.sources.decode_text`` (decompression, binary refused, universal newlines, BOM
    dropped), in constant memory. A byte the encoding cannot decode raises UnicodeDecodeError."""
    decoder = io.IncrementalNewlineDecoder(
        codecs.getincrementaldecoder(encoding)("strict"), translate=True
    )
    checked = at_start = False
    try:
        with open_raw(path) as f:
            while raw := f.read(block):
                if not checked:
                    refuse_binary(raw, path, encoding)
                    checked = True
                text = decoder.decode(raw)
                if text and not at_start:  # the first character decoded may be a BOM
                    text, at_start = text.removeprefix("\ufeff"), True
                if text:
                    yield text
    except (*_CORRUPT, OSError) as e:
        raise _read_error(path, e) from None
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def json_lines(
    lines: Iterable[tuple[int, str]], where: Callable[[int], str]
) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line; a line that is not JSON is refused in one
    line starting with ``where(line number)``."""
    for n, line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise MoelabError(f"{where(n)}: not valid JSON ({e.msg})") from None
        yield n, value
