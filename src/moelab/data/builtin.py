"""The built-in corpus: text that every machine with Python already has (the standard library).

Domains, file order and what is left out: docs/data.md, "The built-in corpus".
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.data.sources import split_long

HELDOUT_PACKAGES = ("email", "html", "http", "json", "urllib", "wsgiref", "xml", "xmlrpc")
SKIP_PARTS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}
)
SKIP_TOP = frozenset({"encodings", "pydoc_data", "lib2to3", "turtledemo"})
MIN_DOCSTRING_CHARS = 40  # one-line docstrings like "Return x." add little prose
DEFAULT_MAX_BYTES = 3_000_000


@dataclass
class BuiltinDomain:
    name: str
    role: str  # "train" or "heldout"
    docs: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)  # {"path", "bytes", "sha256"}
    text_bytes: int = 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Relative paths of the library's own ``.py`` files, in the fixed visiting order."""
    root = root or stdlib_root()
    rels = []
    for folder, subdirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        # prune skipped folders instead of walking them (site-packages can be huge)
        subdirs[:] = [
            d
            for d in subdirs
            if d not in SKIP_PARTS and not (rel_folder == Path(".") and d in SKIP_TOP)
        ]
        rels.extend(rel_folder / n for n in names if n.endswith(".py"))
    rels = [r for r in rels if r.parts[0].removesuffix(".py") not in SKIP_TOP]
    return sorted(rels, key=lambda r: (hashlib.sha256(r.as_posix().encode()).hexdigest(), r))


def is_heldout(rel: Path) -> bool:
    top = rel.parts[0].removesuffix(".py")
    return top in HELDOUT_PACKAGES


def _docstrings(source: str) -> str:
    with warnings.catch_warnings():  # old escape sequences in the library warn on parse
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                found.append(doc)
    return "\n\n".join(found)


def _pydoc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return []
    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


class _Filler:
    """Adds documents to a domain until its byte cap is reached."""

    def __init__(self, domain: BuiltinDomain, cap: int, max_doc_bytes: int):
        self.domain, self.cap, self.max_doc_bytes = domain, cap, max_doc_bytes

    @property
    def full(self) -> bool:
        return self.domain.text_bytes >= self.cap

    def add(self, text: str, record: dict[str, Any] | None) -> None:
        if self.full or not text.strip():
            return
        self.domain.docs.extend(p for p in split_long(text, self.max_doc_bytes) if p.strip())
        self.domain.text_bytes += len(text.encode("utf-8"))
        if record is not None:
            self.domain.files.append(record)


def builtin_corpus(
    max_bytes: int = DEFAULT_MAX_BYTES, max_doc_bytes: int = 32768
) -> tuple[list[BuiltinDomain], dict[str, Any]]:
    """The built-in domains and a description for the manifest (Python version, library path)."""
    root = stdlib_root()
    domains = {
        "code": BuiltinDomain("code", "train"),
        "prose": BuiltinDomain("prose", "train"),
        "code_heldout": BuiltinDomain("code_heldout", "heldout"),
        "prose_heldout": BuiltinDomain("prose_heldout", "heldout"),
    }
    caps = {"train": max_bytes, "heldout": max(1, max_bytes // 4)}
    fill = {n: _Filler(d, caps[d.role], max_doc_bytes) for n, d in domains.items()}

    topics = _pydoc_topics()
    for text in topics:
        fill["prose"].add(text, None)
    for rel in stdlib_files(root):
        suffix = "_heldout" if is_heldout(rel) else ""
        code, prose = fill["code" + suffix], fill["prose" + suffix]
        if code.full and prose.full:
            if all(f.full for f in fill.values()):
                break
            continue
        raw = (root / rel).read_bytes()
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a legacy-encoded file: skipped, the same way on every run
        record = {
            "path": rel.as_posix(),
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        code.add(source, dict(record))
        if not prose.full:
            prose.add(_docstrings(source), dict(record))
    info = {
        "python_version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": str(root),
        "heldout_packages": list(HELDOUT_PACKAGES),
        "pydoc_topics": len(topics),
        "max_bytes": max_bytes,
    }
    return [d for d in domains.values() if d.docs], info
