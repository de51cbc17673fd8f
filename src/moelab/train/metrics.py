"""``metrics.jsonl`` (one JSON object per line) and optional TensorBoard event files.

Only rank 0 writes. On resume the file is cut back to the checkpoint's step, so a resumed run's
file reads exactly like an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moelab.errors import MoelabError
from moelab.io import atomic_write_text

METRICS = "metrics.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete rows of a run's metrics.jsonl (a torn last line is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _made_at(row: dict[str, Any]) -> int:
    """The main-run step after which a row was written: a cooldown branch's row carries the
    step its trajectory ended at, but it was made right after its fork step."""
    return int(row.get("fork_step", row.get("step", 0)))


def _is_step(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def checked_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows a resume keeps or cuts, each checked: a row that is not an object with an
    integer ``step`` (a hand edit) is refused in one line naming its line, before the run
    folder is written. A torn last line (a killed writer) is dropped, as by read_metrics."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = type(e).__name__
        raise MoelabError(f"{path}: cannot read it ({why}); fix or delete it") from None
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (
            isinstance(row, dict)
            and _is_step(row.get("step"))
            and ("fork_step" not in row or _is_step(row["fork_step"]))
        ):
            raise MoelabError(
                f"{path}: line {i} is not a metrics row (a JSON object with an integer "
                "step); fix or delete that line, then resume"
            )
        rows.append(row)
    return rows


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Keep only rows written at or before main step ``last_step`` (rewritten atomically)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [r for r in checked_rows(run_dir) if _made_at(r) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# The per-layer MoE figures drawn in TensorBoard.
_TB_MOE_KEYS = ("overflow_pct_1", "overflow_pct_2", "gate_entropy", "unused_experts", "max_vio")


class MetricsWriter:
    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self._tb = None
        self.tensorboard_note: str | None = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self.tensorboard_note = (
                    "train.tensorboard: the tensorboard package is not installed "
                    "(pip install tensorboard); writing metrics.jsonl only"
                )

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.write(json.dumps(_clean(row)) + "\n")
        self._file.flush()  # a killed process still leaves every completed row on disk
        if self._tb is not None:
            self._write_tensorboard(row)

    def _write_tensorboard(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if row.get("branch"):  # a cooldown branch's end: its own series, not the main run's
            for dom, v in (row.get("val_loss") or {}).items():
                self._tb.add_scalar(f"cooldown_val_loss/{dom}", v, step)
            return
        for key in ("loss", "aux_loss", "z_loss", "lr", "tokens_per_s", "grad_norm"):
            v = row.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                self._tb.add_scalar(f"train/{key}", v, step)
        for dom, v in (row.get("val_loss") or {}).items():
            self._tb.add_scalar(f"val_loss/{dom}", v, step)
        for layer in row.get("moe") or []:
            for key in _TB_MOE_KEYS:
                if key in layer:
                    self._tb.add_scalar(f"moe_layer{layer['layer']}/{key}", layer[key], step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
