"""Text sources: parse ``DOMAIN=LOCATION[:key=value...]`` specs and read them into documents.

What one document is per kind, cutting and normalisation: docs/data.md, "Source specs".
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.data.globbing import expand
from moelab.data.textfile import json_lines, read_bytes
from moelab.errors import MoelabError
from moelab.hub import load_hf_dataset

DOMAIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
DOC_MODES = ("file", "blank", "line")
FILE_OPTIONS = ("encoding", "format", "docs", "field")
HF_OPTIONS = ("config", "split", "field")
SPEC_SYNTAX = (
    "DOMAIN=PATH_OR_GLOB[:encoding=latin-1][:docs=file|blank|line][:format=text|jsonl]"
    "[:field=text]  or  DOMAIN=hf:NAME[:config=C][:split=train][:field=text]"
)


@dataclass(frozen=True)
class SourceSpec:
    """One ``--source``/``--heldout`` argument, parsed; ``options`` are the ``:key=value`` parts."""

    domain: str
    location: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_hf(self) -> bool:
        return self.location.startswith("hf:")

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "location": self.location, "options": dict(self.options)}


def _is_encoding(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def _option_like(part: str) -> bool:
    """``key=value`` (checked against the allowed keys later, so a typo is named) or the bare
    encoding shorthand (``latin-1``, ``utf-8,latin-1``)."""
    return "=" in part or (bool(part) and all(_is_encoding(e) for e in part.split(",")))


def parse_source_spec(text: str) -> SourceSpec:
    """``news=data/*.txt:encoding=latin-1`` -> SourceSpec. A bare last part without ``=``
    (``news=file.txt:latin-1``) is shorthand for the encoding. A ``:`` belongs to the path
    unless what follows it looks like an option, and a text after ``DOMAIN=`` that names an
    existing file is that file (so ``notes:v2.txt`` works as a file name)."""
    domain, sep, rest = text.partition("=")
    domain = domain.strip()
    if not sep or not rest:
        raise MoelabError(f"source {text!r}: expected {SPEC_SYNTAX}")
    if not DOMAIN_RE.match(domain):
        raise MoelabError(
            f"source {text!r}: domain name {domain!r} must start with a letter and use only "
            "letters, digits, '_' and '-'"
        )
    parts = rest.split(":")
    if os.path.lexists(os.path.expanduser(rest)):  # an existing file is literal: notes:v2.txt
        location, opt_parts, allowed = rest, [], FILE_OPTIONS
    elif parts[0] == "hf":  # hf:NAME keeps its prefix as the location
        if len(parts) < 2 or not parts[1]:
            raise MoelabError(f"source {text!r}: expected hf:NAME (e.g. hf:Salesforce/wikitext)")
        location, opt_parts, allowed = f"hf:{parts[1]}", parts[2:], HF_OPTIONS
    else:
        # Options are the trailing parts that look like options (key=value, or a bare encoding
        # name); everything before them is the path, colons included.
        cut = len(parts)
        while cut > 1 and _option_like(parts[cut - 1]):
            cut -= 1
        location, opt_parts, allowed = ":".join(parts[:cut]), parts[cut:], FILE_OPTIONS
    options: dict[str, str] = {}
    for part in opt_parts:
        key, eq, value = part.partition("=")
        if not eq and not location.startswith("hf:"):
            key, value = "encoding", part
        if key not in allowed or not value:
            raise MoelabError(
                f"source {text!r}: unknown or empty option {part!r}; allowed: "
                + ", ".join(f"{k}=..." for k in allowed)
            )
        options[key] = value
    if options.get("docs", "file") not in DOC_MODES:
        raise MoelabError(f"source {text!r}: docs must be one of {', '.join(DOC_MODES)}")
    if options.get("format", "text") not in ("text", "jsonl"):
        raise MoelabError(f"source {text!r}: format must be 'text' or 'jsonl'")
    for enc in options.get("encoding", "utf-8").split(","):
        try:
            "".encode(enc)
        except LookupError:
            raise MoelabError(f"source {text!r}: unknown encoding {enc!r}") from None
    return SourceSpec(domain, location, tuple(sorted(options.items())))


@dataclass
class DocSet:
    """The documents of one source, plus a record of where they came from (for the manifest and
    the fingerprint that makes re-runs idempotent)."""

    docs: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Splitting text into documents


def split_long(text: str, max_bytes: int) -> list[str]:
    """Cut ``text`` into pieces of at most ~``max_bytes`` UTF-8 bytes, preferring blank lines,
    then line ends, then any character. ``"".join(pieces) == text`` (nothing is dropped)."""
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8")) <= max_bytes:
        return [text]
    out: list[str] = []
    _pack(text, max_bytes, 0, out)
    return out


_LEVELS = (re.compile(r"(?<=\n\n)"), re.compile(r"(?<=\n)"))


def _pack(text: str, max_bytes: int, level: int, out: list[str]) -> None:
    if level == len(_LEVELS):  # no separator left: fixed-size character slices
        step = max(1, max_bytes // 4)
        out.extend(text[i : i + step] for i in range(0, len(text), step))
        return
    current: list[str] = []
    size = 0
    for piece in _LEVELS[level].split(text):
        n = len(piece.encode("utf-8"))
        if n > max_bytes:
            if current:
                out.append("".join(current))
                current, size = [], 0
            _pack(piece, max_bytes, level + 1, out)
            continue
        if size + n > max_bytes and current:
            out.append("".join(current))
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        out.append("".join(current))


def text_to_docs(text: str, mode: str, max_doc_bytes: int) -> list[str]:
    if mode == "file":
        pieces = split_long(text, max_doc_bytes)
    elif mode == "line":
        pieces = text.split("\n")
    else:  # blank: blocks of non-blank lines
        pieces = []
        block: list[str] = []
        for line in text.split("\n"):
            if line.strip():
                block.append(line)
            elif block:
                pieces.extend(split_long("\n".join(block), max_doc_bytes))
                block = []
        if block:
            pieces.extend(split_long("\n".join(block), max_doc_bytes))
    return [p for p in pieces if p.strip()]


# ---------------------------------------------------------------------------------------------
# Files


def expand_files(spec: SourceSpec) -> list[Path]:
    pattern = os.path.expanduser(spec.location)
    if os.path.isdir(pattern):
        raise MoelabError(
            f"{spec.domain}: {pattern} is a folder; give a file or a glob such as {pattern}/*.txt"
        )
    literal = os.path.lexists(pattern) or not glob.has_magic(pattern)
    files = [Path(m).resolve() for m in expand(pattern) if os.path.isfile(m)]
    if not files:
        what = "no such file" if literal else "no files match"
        hint = ""
        if ":" in pattern:
            tail = pattern.rpartition(":")[2]
            hint = (
                f" (':{tail}' is no option or known encoding, so it was read as part of the path)"
            )
        raise MoelabError(f"{spec.domain}: {what} {pattern!r}{hint}; check its path")
    return files


def decode_text(raw: bytes, path: Path, spec: SourceSpec) -> tuple[str, str]:
    """Decode with the spec's encoding(s), tried in order; returns (text, encoding used)."""
    encodings = (spec.option("encoding") or "utf-8").split(",")
    for i, enc in enumerate(encodings):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError as e:
            if i < len(encodings) - 1:
                continue
            hint = (
                f"{spec.domain}={spec.location}:encoding=latin-1"
                if enc.lower().replace("_", "-") in ("utf-8", "utf8")
                else f"the right one, e.g. {spec.domain}={spec.location}:encoding=utf-8,latin-1"
            )
            raise MoelabError(
                f"{path} is not valid {enc} (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                f"give its encoding in the source spec: {hint}"
            ) from None
        text = text.removeprefix("\ufeff")
        # universal newlines, as open(..., newline=None) would give
        return io.StringIO(text, newline=None).read(), enc
    raise AssertionError("unreachable")


def _file_record(path: Path, raw_size: int, sha256: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "bytes": raw_size, "sha256": sha256, **extra}


# sha256 of a file's bytes -> (domain, path) of the first file read with them
Seen = dict[str, tuple[str, Path]]


def _first_reading(sha: str, path: Path, domain: str, seen: Seen) -> bool:
    """True the first time these bytes are read. Again in the same domain (a glob matching a
    copy or a link twice): False, the copy is skipped. In another domain: refused, since the
    document could then be trained on in one domain and validated on in the other."""
    if sha not in seen:
        seen[sha] = (domain, path)
        return True
    first_domain, first = seen[sha]
    if first_domain != domain:
        raise MoelabError(
            f"{path} has the same bytes as {first}, already read for domain {first_domain!r}; "
            f"a document may not be in two domains ({first_domain!r} and {domain!r}), where it "
            "could be trained on and validated on: remove one of them from the sources"
        )
    return False


def read_file_source(spec: SourceSpec, max_doc_bytes: int, seen: Seen | None = None) -> DocSet:
    """The documents of every file a spec names, each distinct content once (``seen``: the
    checksums already read by earlier sources of the same preparation)."""
    out = DocSet(docs=[])
    seen = {} if seen is None else seen
    for path in expand_files(spec):
        raw = read_bytes(path, spec.option("encoding"))
        sha = hashlib.sha256(raw).hexdigest()
        if not raw.strip():  # no document: an empty file in two domains shares nothing
            out.records.append(_file_record(path, len(raw), sha, empty=True))
            continue
        if not _first_reading(sha, path, spec.domain, seen):
            out.records.append(_file_record(path, len(raw), sha, duplicate_of=str(seen[sha][1])))
            continue
        fmt = spec.option("format") or (
            "jsonl" if re.search(r"\.(jsonl|ndjson)(\.(gz|bz2|xz))?$", path.name) else "text"
        )
        text, enc = decode_text(raw, path, spec)
        if fmt == "jsonl":
            docs = list(_jsonl_docs(text, path, spec.option("field") or "text", max_doc_bytes))
        else:
            docs = text_to_docs(text, spec.option("docs") or "file", max_doc_bytes)
        out.docs.extend(docs)
        out.records.append(
            _file_record(path, len(raw), sha, encoding=enc, format=fmt, documents=len(docs))
        )
    return out


def _get_field(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _jsonl_docs(text: str, path: Path, field_name: str, max_doc_bytes: int) -> Iterator[str]:
    lines = enumerate(text.split("\n"), start=1)
    for lineno, row in json_lines(lines, lambda n: f"{path}:{n}"):
        value = _get_field(row, field_name) if isinstance(row, dict) else _MISSING
        if value is _MISSING:
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise MoelabError(
                f"{path}:{lineno}: no text field {field_name!r} (found: {keys}); "
                "name the field with :field=NAME"
            )
        if not isinstance(value, str):
            raise MoelabError(
                f"{path}:{lineno}: field {field_name!r} is {type(value).__name__}, not a string"
            )
        if value.strip():
            yield from split_long(value, max_doc_bytes)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def read_hf_source(spec: SourceSpec, max_doc_bytes: int) -> DocSet:
    """Rows of a Hugging Face dataset. Without network we switch the hub to offline mode first,
    so a cached dataset still loads and a missing one fails at once instead of retrying."""
    name = spec.location.removeprefix("hf:")
    config, split = spec.option("config"), spec.option("split") or "train"
    field_name = spec.option("field") or "text"
    config_note = f" config {config!r}" if config else ""
    ds = load_hf_dataset(
        name,
        config,
        split,
        what=f"{spec.domain}: Hugging Face dataset {name!r}{config_note}",
        missing_package=(
            f"{spec.domain}: hf: sources need the 'datasets' package: pip install 'moelab[hf]'"
        ),
    )
    if field_name not in ds.column_names:
        raise MoelabError(
            f"{spec.domain}: dataset {name!r} has no column {field_name!r} "
            f"(columns: {', '.join(ds.column_names)}); choose one with :field=NAME"
        )
    docs: list[str] = []
    for i, value in enumerate(ds[field_name]):
        if not isinstance(value, str):
            raise MoelabError(f"{spec.domain}: {name} row {i} field {field_name!r} is not a string")
        if value.strip():
            docs.extend(split_long(value, max_doc_bytes))
    record = {
        "hf": name,
        "config": config,
        "split": split,
        "field": field_name,
        "rows": len(ds),
        "fingerprint": getattr(ds, "_fingerprint", None),
        "documents": len(docs),
    }
    return DocSet(docs=docs, records=[record])


def read_source(spec: SourceSpec, max_doc_bytes: int, seen: Seen | None = None) -> DocSet:
    """Documents of one source. Pass the same ``seen`` to every source of a preparation so a
    file's content is read once across all of them (:func:`_first_reading`)."""
    if spec.is_hf:
        return read_hf_source(spec, max_doc_bytes)
    return read_file_source(spec, max_doc_bytes, seen)
