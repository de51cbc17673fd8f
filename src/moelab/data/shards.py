"""The prepared folder on disk: writing token shards, and :class:`PreparedData` to read them.

Layout, atomic writing and the checks on open: docs/data.md, "The prepared folder".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from moelab.data.folder_checks import check_ids, check_manifest, member, scan_tokens
from moelab.data.tokenizer import load_tokenizer, special_ids
from moelab.errors import MoelabError
from moelab.io import sha256_file

FORMAT = "moelab-prepared-data"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
OFFSET_DTYPE = np.dtype(np.int64)


def shard_names(domain: str, split: str) -> tuple[str, str]:
    return f"{domain}.{split}.tokens.bin", f"{domain}.{split}.offsets.bin"


def write_split(
    folder: Path,
    domain: str,
    split: str,
    docs_ids: Sequence[np.ndarray],
    eot_id: int,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Write one split's tokens (each document followed by ``eot_id``) and offsets; returns its
    manifest record. ``folder`` is the temporary output folder, renamed as a whole later."""
    tokens_name, offsets_name = shard_names(domain, split)
    eot = np.asarray([eot_id], dtype=dtype)
    offsets = np.zeros(len(docs_ids) + 1, dtype=OFFSET_DTYPE)
    h = hashlib.sha256()
    with open(folder / tokens_name, "wb") as f:
        for i, ids in enumerate(docs_ids):
            for part in (ids.astype(dtype, copy=False), eot):
                data = part.tobytes()
                f.write(data)
                h.update(data)
            offsets[i + 1] = offsets[i] + len(ids) + 1
    (folder / offsets_name).write_bytes(offsets.tobytes())
    n_tokens = int(offsets[-1])
    return {
        "tokens": n_tokens,
        "documents": len(docs_ids),
        "files": {
            "tokens": {
                "name": tokens_name,
                "bytes": n_tokens * dtype.itemsize,
                "sha256": h.hexdigest(),
            },
            "offsets": {
                "name": offsets_name,
                "bytes": offsets.nbytes,
                "sha256": hashlib.sha256(offsets.tobytes()).hexdigest(),
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise MoelabError(
            f"{path} is not a prepared data folder (no manifest.json); make one with moelab prepare"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MoelabError(f"{mpath} is corrupt ({e}); delete {path} and prepare again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise MoelabError(
            f"{mpath} is not moelab prepared data version {FORMAT_VERSION}; prepare it again"
        )
    return manifest


def _check_file(
    path: Path, record: dict[str, Any], full: bool, dtype: np.dtype | None = None
) -> int | None:
    """Size (always) and SHA-256 (``full``) of one named file. For a token file (``dtype``
    given) and ``full``, the largest id too, read in the same pass; returned (None otherwise)."""
    target = member(path, record["name"])
    if not target.is_file():
        raise MoelabError(f"{target} is missing; delete {path} and run moelab prepare again")
    size = target.stat().st_size
    if size != record["bytes"]:
        raise MoelabError(
            f"{target} has {size} bytes, the manifest says {record['bytes']} (truncated or "
            f"altered); delete {path} and run moelab prepare again"
        )
    if not full:
        return None
    if dtype is None:
        digest, top = sha256_file(target), None
    else:
        digest, top = scan_tokens(target, dtype)
    if digest != record["sha256"]:
        raise MoelabError(
            f"{target} does not match its checksum in the manifest (altered or corrupt); "
            f"delete {path} and run moelab prepare again"
        )
    return top


def verify_folder(path: Path, manifest: dict[str, Any], full: bool) -> None:
    """The manifest's schema and file names (:mod:`moelab.data.folder_checks`), then sizes
    always; SHA-256 of every shard and the range of its token ids too when ``full``. The
    tokenizer is always hashed (it is small and a silently different tokenizer would make every
    number meaningless)."""
    check_manifest(path, manifest)
    _check_file(path, manifest["tokenizer"]["file"], full=True)
    dtype = np.dtype(manifest["dtype"])
    vocab = manifest["tokenizer"]["vocab_size"]
    for domain in manifest["domains"].values():
        for split in domain["splits"].values():
            _check_file(path, split["files"]["offsets"], full)
            top = _check_file(path, split["files"]["tokens"], full, dtype)
            if top is not None:
                check_ids(path / split["files"]["tokens"]["name"], top, vocab)


class PreparedData:
    """A prepared folder, opened for reading (layout: docs/data.md, "The prepared folder")."""

    def __init__(self, path: Path, manifest: dict[str, Any], tokenizer: Tokenizer):
        self.path = path
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.eot_id: int = manifest["tokenizer"]["eot_id"]
        self.pad_id: int = manifest["tokenizer"]["pad_id"]
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.dtype = np.dtype(manifest["dtype"])
        self._memmaps: dict[tuple[str, str], np.ndarray] = {}
        self._ids_checked = False  # else each split's ids are range-checked on its first read

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> PreparedData:
        """Open a folder written by :func:`moelab.data.prepare`. Every file's size is checked;
        with ``verify`` (default) every shard's SHA-256 as well (reads every byte)."""
        path = Path(path)
        if not path.is_dir():
            raise MoelabError(f"prepared data folder {path} does not exist; run moelab prepare")
        manifest = read_manifest(path)
        verify_folder(path, manifest, full=verify)
        recorded = manifest["tokenizer"]
        tok = load_tokenizer(member(path, recorded["file"]["name"]))
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if vocab != recorded["vocab_size"]:
            raise MoelabError(
                f"{path}: the manifest's vocab_size {recorded['vocab_size']} is not "
                f"its tokenizer's {vocab} (a crafted or damaged folder); delete it and run "
                "moelab prepare again"
            )
        ids = special_ids(tok, str(path / "tokenizer.json"))
        if ids != (recorded["eot_id"], recorded["pad_id"]):
            raise MoelabError(f"{path}: tokenizer special ids disagree with the manifest")
        data = cls(path, manifest, tok)
        data._ids_checked = verify  # verified: every id was range-checked with the checksums
        return data

    # -- what is here -----------------------------------------------------------------------
    @cached_property
    def domains(self) -> list[str]:
        return list(self.manifest["domains"])

    @cached_property
    def train_domains(self) -> list[str]:
        return [d for d, v in self.manifest["domains"].items() if v["role"] == "train"]

    @cached_property
    def heldout_domains(self) -> list[str]:
        return [d for d, v in self.manifest["domains"].items() if v["role"] == "heldout"]

    def splits(self, domain: str) -> list[str]:
        return list(self._domain(domain)["splits"])

    def num_tokens(self, domain: str, split: str) -> int:
        return int(self._split(domain, split)["tokens"])

    def num_docs(self, domain: str, split: str) -> int:
        return int(self._split(domain, split)["documents"])

    def _domain(self, domain: str) -> dict[str, Any]:
        try:
            return self.manifest["domains"][domain]
        except KeyError:
            raise MoelabError(
                f"no domain {domain!r} in {self.path}; domains: {', '.join(self.domains)}"
            ) from None

    def _split(self, domain: str, split: str) -> dict[str, Any]:
        splits = self._domain(domain)["splits"]
        if split not in splits:
            kind = "held-out " if self._domain(domain)["role"] == "heldout" else ""
            raise MoelabError(
                f"{kind}domain {domain!r} has no {split!r} split (it has: {', '.join(splits)})"
            )
        return splits[split]

    # -- arrays -----------------------------------------------------------------------------
    def tokens(self, domain: str, split: str) -> np.ndarray:
        """Read-only memory map of one split's token ids (documents separated by eot_id)."""
        key = (domain, split)
        if key not in self._memmaps:
            rec = self._split(domain, split)
            name = rec["files"]["tokens"]["name"]
            if rec["tokens"] == 0:
                self._memmaps[key] = np.zeros(0, dtype=self.dtype)
            else:
                target = member(self.path, name)
                ids = np.memmap(target, dtype=self.dtype, mode="r")
                if not self._ids_checked:  # one read of the split: cheap next to scoring it
                    check_ids(target, int(ids.max()), self.vocab_size)
                self._memmaps[key] = ids
        return self._memmaps[key]

    def doc_offsets(self, domain: str, split: str) -> np.ndarray:
        """int64 array of n_docs + 1 start positions; document i (with its trailing eot_id) is
        ``tokens[off[i]:off[i + 1]]``."""
        rec = self._split(domain, split)
        offsets = np.fromfile(member(self.path, rec["files"]["offsets"]["name"]), OFFSET_DTYPE)
        if (
            len(offsets) != rec["documents"] + 1
            or offsets[0] != 0
            or offsets[-1] != rec["tokens"]
            or np.any(np.diff(offsets) < 1)
        ):
            raise MoelabError(f"{self.path}: offsets of {domain}/{split} are inconsistent")
        return offsets

    # -- text -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-document token added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; special tokens are shown as their strings (e.g. <|endoftext|>)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"PreparedData({str(self.path)!r}, domains={self.domains})"
