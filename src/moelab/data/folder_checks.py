"""What a prepared folder's manifest may claim, checked before any file it names is opened.

A manifest is data from disk (a crafted one used to read files outside the folder or size a
384 TB embedding): docs/data.md, "A folder is data, not instructions".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from moelab.errors import MoelabError

TOKEN_DTYPES = ("uint16", "uint32")
ROLES = ("train", "heldout")
SPLITS = ("train", "val")


def _broken(path: Path, what: str) -> MoelabError:
    return MoelabError(
        f"{path / 'manifest.json'} is malformed ({what}); delete {path} and run moelab prepare "
        "again"
    )


def member(folder: Path, name: Any) -> Path:
    """``folder / name`` when ``name`` is a plain file name whose file, symlinks followed, lies
    in ``folder``; a one-line refusal otherwise."""
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )
    if not plain:
        raise MoelabError(
            f"{folder}: the manifest names the file {name!r}, which is not a plain file name "
            "inside the folder; refusing to read outside it (a crafted or damaged manifest)"
        )
    target = folder / name
    if target.resolve().parent != folder.resolve():
        raise MoelabError(
            f"{target} is a link to {target.resolve()}, outside the folder; refusing to read "
            "outside a prepared folder (copy the file in instead)"
        )
    return target


def _int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _file_record(path: Path, rec: Any, where: str) -> None:
    if not isinstance(rec, dict):
        raise _broken(path, f"{where} is not an object")
    member(path, rec.get("name"))
    if not _int(rec.get("bytes")) or not isinstance(rec.get("sha256"), str):
        raise _broken(path, f"{where} needs an integer 'bytes' and a string 'sha256'")


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Schema, confinement of every named file, and a token type that fits the vocabulary."""
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict):
        raise _broken(path, "no 'tokenizer' object")
    _file_record(path, tok.get("file"), "tokenizer.file")
    for key in ("vocab_size", "eot_id", "pad_id"):
        if not _int(tok.get(key)):
            raise _broken(path, f"tokenizer.{key} is not a non-negative integer")
    dtype = manifest.get("dtype")
    if dtype not in TOKEN_DTYPES:
        raise _broken(path, f"dtype {dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
    if tok["vocab_size"] > np.iinfo(dtype).max + 1:
        raise _broken(path, f"vocab_size {tok['vocab_size']} does not fit dtype {dtype}")
    domains = manifest.get("domains")
    if not isinstance(domains, dict):
        raise _broken(path, "'domains' is not an object")
    for name, dom in domains.items():
        if not isinstance(dom, dict) or dom.get("role") not in ROLES:
            raise _broken(path, f"domain {name!r} needs a role of {' or '.join(ROLES)}")
        splits = dom.get("splits")
        if not isinstance(splits, dict) or not set(splits) <= set(SPLITS):
            raise _broken(path, f"domain {name!r} needs splits among {', '.join(SPLITS)}")
        for split, rec in splits.items():
            where = f"{name}/{split}"
            if not isinstance(rec, dict) or not _int(rec.get("tokens")):
                raise _broken(path, f"{where} needs an integer 'tokens'")
            if not _int(rec.get("documents")) or not isinstance(rec.get("files"), dict):
                raise _broken(path, f"{where} needs 'documents' and 'files'")
            for kind in ("tokens", "offsets"):
                _file_record(path, rec["files"].get(kind), f"{where} {kind} file")
            expected = rec["tokens"] * np.dtype(dtype).itemsize
            if rec["files"]["tokens"]["bytes"] != expected:
                raise _broken(
                    path,
                    f"{where}: {rec['tokens']} tokens of {dtype} are not "
                    f"{rec['files']['tokens']['bytes']} bytes",
                )


def check_ids(target: Path, max_id: int, vocab_size: int) -> None:
    if max_id >= vocab_size:
        raise MoelabError(
            f"{target} holds token id {max_id}, outside the tokenizer's {vocab_size} ids "
            "(a crafted or corrupt shard); delete the folder and run moelab prepare again"
        )


def scan_tokens(target: Path, dtype: np.dtype, chunk_tokens: int = 1 << 22) -> tuple[str, int]:
    """(SHA-256, largest token id; -1 when empty) of a token file, in one pass."""
    h = hashlib.sha256()
    top = -1
    with open(target, "rb") as f:
        while block := f.read(chunk_tokens * dtype.itemsize):
            h.update(block)
            ids = np.frombuffer(block, dtype=dtype, count=len(block) // dtype.itemsize)
            if len(ids):
                top = max(top, int(ids.max()))
    return h.hexdigest(), top
