"""``prepare``: text sources -> tokenizer + per-domain token shards + manifest, idempotently.

Splits, fingerprint, the temporary folder and memory use: docs/data.md, "The prepared folder".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from moelab import __version__
from moelab.config import from_dict
from moelab.data.builtin import DEFAULT_MAX_BYTES, builtin_corpus
from moelab.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    read_manifest,
    verify_folder,
    write_split,
)
from moelab.data.sources import SourceSpec, parse_source_spec, read_source
from moelab.data.tokenizer import (
    DocumentEncoder,
    check_vocab_size,
    load_tokenizer,
    special_ids,
    token_dtype,
    train_bpe,
)
from moelab.errors import MoelabError, check_at_least_one
from moelab.io import atomic_dir, atomic_write_json, no_space_left, sha256_file
from moelab.lock import folder_lock, remove_stale_temps
from moelab.paths import check_can_create
from moelab.progress import bars, task


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes the output (and so goes into the fingerprint). The one place of
    these defaults: ``prepare()`` and ``moelab prepare``'s flags take them from here."""

    vocab_size: int = 4096  # BPE vocabulary size
    seed: int = 0  # of the train/val split
    val_fraction: float = 0.05  # share of a training domain's text bytes held for validation ...
    val_max_bytes: int = 1 << 19  # ... but at most this much (also caps held-out domains)
    max_doc_bytes: int = 1 << 15  # longer documents are cut at paragraph boundaries
    builtin_max_bytes: int = DEFAULT_MAX_BYTES  # per built-in training domain (held-out: 1/4)

    def validate(self) -> PrepareSettings:
        if not 0.0 < self.val_fraction < 1.0:
            raise MoelabError(f"{{key}} must be in (0, 1), got {self.val_fraction}", "val_fraction")
        check_at_least_one(
            val_max_bytes=self.val_max_bytes,
            max_doc_bytes=self.max_doc_bytes,
            builtin_max_bytes=self.builtin_max_bytes,
        )
        return self


@dataclass
class DomainInput:
    name: str
    role: str  # "train" | "heldout"
    docs: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PrepareResult:
    path: Path
    manifest: dict[str, Any]
    created: bool  # False when the folder already held this exact preparation

    def summary_rows(self) -> list[tuple[str, str, str, int, int]]:
        """(domain, role, split, documents, tokens) for printing."""
        rows = []
        for name, d in self.manifest["domains"].items():
            for split, s in d["splits"].items():
                rows.append((name, d["role"], split, s["documents"], s["tokens"]))
        return rows


def _as_specs(items: Sequence[SourceSpec | str]) -> list[SourceSpec]:
    return [s if isinstance(s, SourceSpec) else parse_source_spec(s) for s in items]


def _collect_inputs(
    sources: list[SourceSpec],
    heldout: list[SourceSpec],
    use_builtin: bool,
    settings: PrepareSettings,
    progress: Any,
) -> tuple[dict[str, DomainInput], dict[str, Any] | None]:
    domains: dict[str, DomainInput] = {}
    seen: dict = {}  # one map for every source: a file's content is read once per preparation
    for role, specs in (("train", sources), ("heldout", heldout)):
        for spec in specs:
            d = domains.setdefault(spec.domain, DomainInput(spec.domain, role))
            if d.role != role:
                raise MoelabError(
                    f"domain {spec.domain!r} is given both as a training source and in {{key}}; "
                    "a domain is either trained on or held out",
                    key="heldout",
                )
            with task(progress, f"reading {spec.domain}"):
                docset = read_source(spec, settings.max_doc_bytes, seen)
            if not docset.docs:
                raise MoelabError(f"{spec.domain}: {spec.location} holds no text")
            d.docs.extend(docset.docs)
            d.sources.append({**spec.to_json(), "inputs": docset.records})
    info = None
    if use_builtin:
        with task(progress, "reading built-in corpus"):
            built, info = builtin_corpus(settings.builtin_max_bytes, settings.max_doc_bytes)
        for b in built:
            if b.name in domains:
                raise MoelabError(
                    f"domain {b.name!r} is also a built-in domain; rename yours or leave out "
                    "the built-in corpus"
                )
            src = {"builtin": b.name, "python_version": info["python_version"], "inputs": b.files}
            domains[b.name] = DomainInput(b.name, b.role, b.docs, [src])
    if not any(d.role == "train" for d in domains.values()):
        raise MoelabError(
            "no training domain: give a training source in {key} (or use the built-in corpus)",
            key="sources",
        )
    return domains, info


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def split_documents(
    doc_bytes: Sequence[int], role: str, domain: str, settings: PrepareSettings
) -> dict[str, list[int]]:
    """Document indices per split (each list in corpus order). Validation documents are drawn in
    a seeded random order until the size limit is reached; held-out domains are all validation
    (capped at ``val_max_bytes``)."""
    n = len(doc_bytes)
    rng = np.random.default_rng([settings.seed, _stable_int(domain)])
    order = rng.permutation(n)
    total = sum(doc_bytes)
    if role == "train":
        if n < 2:
            raise MoelabError(
                f"domain {domain!r} has only {n} document, too few for a train/val split; "
                "add text, use :docs=blank, or lower max_doc_bytes"
            )
        target = min(settings.val_fraction * total, settings.val_max_bytes)
        max_val = n - 1
    else:
        target, max_val = settings.val_max_bytes, n
    val: list[int] = []
    size = 0
    for i in order:
        if val and (size >= target or len(val) >= max_val):
            break
        val.append(int(i))
        size += doc_bytes[i]
    val_set = set(val)
    splits = {"val": sorted(val)}
    if role == "train":
        splits = {"train": [i for i in range(n) if i not in val_set], **splits}
    return splits


def fingerprint(
    domains: dict[str, DomainInput],
    settings: PrepareSettings,
    tokenizer_sha256: str | None,
    builtin_info: dict[str, Any] | None,
) -> str:
    """SHA-256 of everything that determines the output: settings, the tokenizer given (if any),
    and each domain's role and sources with the checksum of every input file."""
    payload = {
        "format_version": FORMAT_VERSION,
        "settings": {  # settings that cannot matter are left out, so they cannot refuse a rerun
            k: v
            for k, v in asdict(settings).items()
            if not (k == "vocab_size" and tokenizer_sha256)
            and not (k == "builtin_max_bytes" and builtin_info is None)
        },
        "tokenizer": tokenizer_sha256,
        "builtin": builtin_info,
        "domains": {n: {"role": d.role, "sources": d.sources} for n, d in domains.items()},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _out_is_free(out: Path) -> bool:
    """True if ``out`` is absent or an empty folder; False if it looks like a prepared folder;
    an error (before any work) if it is something else."""
    check_can_create(out)
    if not out.exists():
        return True
    if not out.is_dir():
        raise MoelabError(f"{{key}} {out} exists and is not a folder; choose another path", "out")
    if not any(out.iterdir()):
        return True
    if not (out / "manifest.json").is_file():
        raise MoelabError(
            f"{{key}} {out} exists and is not a moelab prepared folder; "
            "choose another {key} (nothing is overwritten)",
            "out",
        )
    read_manifest(out)
    return False


def _check_existing(out: Path, fp: str) -> dict[str, Any] | None:
    """The manifest if ``out`` already holds this preparation (verified); None if ``out`` is free;
    an error if it holds something else."""
    if _out_is_free(out):
        return None
    manifest = read_manifest(out)
    if manifest.get("fingerprint") != fp:
        raise MoelabError(
            f"{{key}} {out} holds a different preparation (other sources or settings); "
            "choose another {key} or delete that folder first",
            "out",
        )
    verify_folder(out, manifest, full=True)
    return manifest


@contextlib.contextmanager
def _disk_full_is_one_line(out: Path) -> Iterator[None]:
    """A full disk while writing the folder: one line instead of a Rust or numpy traceback.
    atomic_dir has removed the partial temporary folder by then, so OUT is as it was."""
    try:
        yield
    except Exception as e:
        if not no_space_left(e):
            raise
        raise MoelabError(
            f"no space left on the device holding {out.parent}: {out} was not prepared and "
            "nothing of it is left; free space (the shards take 2 or 4 bytes per token) "
            "and run the same command again"
        ) from None


def prepare(
    out: str | Path,
    sources: Sequence[SourceSpec | str] = (),
    heldout: Sequence[SourceSpec | str] = (),
    settings: PrepareSettings | None = None,
    *,
    builtin: bool | None = None,
    tokenizer: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
    **options: Any,
) -> PrepareResult:
    """Prepare ``out`` from ``sources`` (training domains) and ``heldout`` (evaluation-only
    domains), each a ``DOMAIN=PATH_OR_GLOB[:options]`` string or a :class:`SourceSpec`.
    Arguments and defaults: docs/data.md, "Quick start". Re-running with the same inputs returns
    the existing folder untouched.
    """
    if settings is not None and options:
        raise TypeError("prepare: give settings or keyword settings, not both")
    settings = (settings or from_dict(PrepareSettings, options)).validate()
    check_at_least_one(workers=workers)
    out = Path(out).resolve()
    src_specs, heldout_specs = _as_specs(sources), _as_specs(heldout)
    use_builtin = (not src_specs) if builtin is None else builtin
    user_tok = None
    if tokenizer is not None:
        user_tok = load_tokenizer(tokenizer)
        special_ids(user_tok, str(tokenizer))
    else:
        check_vocab_size(settings.vocab_size)  # before any reading

    # One preparation per folder at a time; the lock is held until the folder is complete.
    with folder_lock(out, "prepare"):
        tok_sha = sha256_file(Path(tokenizer)) if tokenizer is not None else None
        _out_is_free(out)  # refuse a wrong --out before reading any input
        columns = ("spinner", "{task.description:<28}", "bar", "{task.percentage:>5.1f}%", "speed")
        with bars(progress, *columns, "elapsed") as prog:
            domains, builtin_info = _collect_inputs(
                src_specs, heldout_specs, use_builtin, settings, prog
            )
            fp = fingerprint(domains, settings, tok_sha, builtin_info)
            existing = _check_existing(out, fp)
            if existing is not None:
                return PrepareResult(out, existing, created=False)

            doc_bytes = {n: [len(t.encode("utf-8")) for t in d.docs] for n, d in domains.items()}
            splits = {
                n: split_documents(doc_bytes[n], d.role, n, settings) for n, d in domains.items()
            }

            if user_tok is not None:
                tok = user_tok
            else:
                train_texts = [
                    domains[n].docs[i]
                    for n in domains
                    if domains[n].role == "train"
                    for i in splits[n]["train"]
                ]
                total = sum(len(t) for t in train_texts)
                with task(prog, f"training BPE ({settings.vocab_size})", total):
                    tok = train_bpe(train_texts, settings.vocab_size)
            eot_id, pad_id = special_ids(tok)
            vocab = tok.get_vocab_size(with_added_tokens=True)
            dtype = token_dtype(vocab)

            if out.exists():  # an empty folder the user made: replaced by the complete one
                out.rmdir()
            remove_stale_temps(out)  # left by killed runs: we hold the lock, so none is live
            with (
                _disk_full_is_one_line(out),
                atomic_dir(out) as tmp,
                DocumentEncoder(tok, workers) as encoder,
            ):
                tok_path = tmp / "tokenizer.json"
                tok.save(str(tok_path))
                domain_records: dict[str, Any] = {}
                for name, d in domains.items():
                    order = [i for s in splits[name].values() for i in s]
                    chars = sum(len(d.docs[i]) for i in order)
                    with task(prog, f"tokenizing {name}", chars) as advance:
                        ids = encoder.encode([d.docs[i] for i in order], advance)
                    by_doc = dict(zip(order, ids))
                    split_records = {}
                    for split, idx in splits[name].items():
                        rec = write_split(tmp, name, split, [by_doc[i] for i in idx], eot_id, dtype)
                        rec["text_bytes"] = sum(doc_bytes[name][i] for i in idx)
                        split_records[split] = rec
                    domain_records[name] = {
                        "role": d.role,
                        "documents": len(d.docs),
                        "text_bytes": sum(doc_bytes[name]),
                        "sources": d.sources,
                        "splits": split_records,
                    }
                manifest = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "moelab_version": __version__,
                    "fingerprint": fp,
                    "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "python_version": platform.python_version(),
                    "tokenizers_version": tokenizers.__version__,
                    "seed": settings.seed,
                    "settings": asdict(settings),
                    "dtype": dtype.name,
                    "tokenizer": {
                        "file": {
                            "name": "tokenizer.json",
                            "bytes": tok_path.stat().st_size,
                            "sha256": sha256_file(tok_path),
                        },
                        "trained": user_tok is None,
                        "source": str(Path(tokenizer).resolve()) if tokenizer is not None else None,
                        "vocab_size": vocab,
                        "eot_id": eot_id,
                        "pad_id": pad_id,
                        "eot_token": tok.id_to_token(eot_id),
                        "pad_token": tok.id_to_token(pad_id),
                    },
                    "builtin": builtin_info,
                    "domains": domain_records,
                }
                atomic_write_json(tmp / "manifest.json", manifest)
        return PrepareResult(out, manifest, created=True)
