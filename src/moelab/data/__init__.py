"""Data: text sources -> tokenizer + per-domain token shards -> training and evaluation batches.

See docs/data.md. The loader (which needs torch) is imported on first use, so tokenizer worker
processes and ``moelab prepare`` start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moelab.data.prepare import PrepareResult, PrepareSettings, prepare
from moelab.data.shards import PreparedData
from moelab.data.sources import SourceSpec, parse_source_spec
from moelab.lazy import lazy_names

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

# EvalBatch, TrainStream and eval_windows (the loader needs torch) are imported on first use.
_, __getattr__, __dir__ = lazy_names(
    __name__, {"loader": ("EvalBatch", "TrainStream", "eval_windows")}
)
