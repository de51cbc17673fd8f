"""Data: text sources -> tokenizer + per-domain token shards -> training and evaluation batches.

``prepare`` writes a folder; ``PreparedData.open`` reads it; ``TrainStream`` and ``eval_windows``
turn it into batches. See docs/data.md.

The loader (which needs torch) is imported on first use, so tokenizer worker processes and
``moelab prepare`` start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moelab.data.prepare import PrepareResult, PrepareSettings, prepare
from moelab.data.shards import PreparedData
from moelab.data.sources import SourceSpec, parse_source_spec

if TYPE_CHECKING:
    from moelab.data.loader import EvalBatch, TrainStream, eval_windows

__all__ = [
    "EvalBatch",
    "PrepareResult",
    "PrepareSettings",
    "PreparedData",
    "SourceSpec",
    "TrainStream",
    "eval_windows",
    "parse_source_spec",
    "prepare",
]

_LAZY = {"TrainStream", "EvalBatch", "eval_windows"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from moelab.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'moelab.data' has no attribute {name!r}")
