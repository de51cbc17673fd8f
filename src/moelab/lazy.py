"""Package namespaces whose names are imported on first use (PEP 562 ``__getattr__``).

``moelab.data``, ``moelab.eval`` and ``moelab.study`` export their public functions this way:
``from moelab.eval import run_perplexity`` works, while importing one submodule (a tokenizer
worker importing ``moelab.data.sources``, the report importing ``moelab.study.analysis.fit``)
does not import every sibling and torch with it. Nothing here imports the packages it serves, so no
import cycle can start here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, where: dict[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``: every name in ``where[submodule]``
    comes from ``package.submodule``, imported when the name is first asked for; ``dir()`` (a
    notebook's completion) lists them before that."""
    home = {name: f"{package}.{sub}" for sub, names in where.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(home[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(home))

    return sorted(home), __getattr__, __dir__
