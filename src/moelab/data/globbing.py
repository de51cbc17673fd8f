"""User paths to files: literal names first, then globs whose ``**`` never enters a symlink.

Python's ``glob(recursive=True)`` follows symlinked folders under ``**`` (one loop back to a
parent turned 2 files into 82 inputs). The rules: docs/data.md, "Paths, globs and links".
"""

from __future__ import annotations

import fnmatch
import glob
import os


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _match(pattern: list[str], names: list[str]) -> bool:
    """Whether path components ``names`` match pattern components (``**``: any number)."""
    if not pattern:
        return not names
    head = pattern[0]
    if head == "**":
        for k in range(len(names) + 1):
            if k and _hidden(names[k - 1]):
                break  # ** does not go through hidden folders (glob's rule)
            if _match(pattern[1:], names[k:]):
                return True
        return False
    if not names or (_hidden(names[0]) and not _hidden(head)):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _match(pattern[1:], names[1:])


def _walk(base: str, rest: list[str]) -> list[str]:
    """Paths below folder ``base`` whose components after it match ``rest``."""
    out = []
    names_hidden = any(_hidden(part) for part in rest)  # e.g. **/.cache/*.txt
    for root, dirs, files in os.walk(base, followlinks=False):
        if not names_hidden:  # then no hidden folder can match: not walked
            dirs[:] = [d for d in dirs if not _hidden(d)]
        rel = os.path.relpath(root, base)
        prefix = [] if rel == "." else rel.split(os.sep)
        for name in dirs + files:
            if _match(rest, [*prefix, name]):
                out.append(os.path.join(base, *prefix, name))
    return out


def expand(pattern: str) -> list[str]:
    """Sorted paths ``pattern`` names: itself when it exists, else its glob matches (files and
    folders; none when nothing matches)."""
    if os.path.lexists(pattern):
        return [pattern]
    if not glob.has_magic(pattern):
        return []
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return sorted(glob.glob(pattern))  # one level per component: links cannot loop
    cut = parts.index("**")
    fixed = os.sep.join(parts[:cut]) if cut else ""
    if cut == 1 and parts[0] == "":  # "/**/...": the root folder
        fixed = os.sep
    bases = sorted(glob.glob(fixed)) if glob.has_magic(fixed) else [fixed]
    out: list[str] = []
    for base in bases:
        if os.path.isdir(base or "."):
            out += _walk(base, parts[cut:]) if base else _walk_here(parts[cut:])
    return sorted(set(out))


def _walk_here(rest: list[str]) -> list[str]:
    """A pattern starting with ``**``: relative paths below the working folder."""
    return [os.path.relpath(p, ".") for p in _walk(".", rest)]
