"""What reaches the terminal from library code. Progress bars on stderr (rich) for prepare,
train and eval, drawn only when the caller asks for them and stderr is a terminal. Messages go
through :mod:`logging` (loggers ``moelab.*``); :func:`log_to_stderr` (the CLI, a study worker)
shows them one line each on stderr, above a bar while one is drawn (rich redirects stderr)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any


def bars(enabled: bool, *columns: str, transient: bool = False) -> Any:
    """A ``rich.progress.Progress`` with ``columns``, each a name below or a text template such
    as ``"{task.description}"``; when not drawn, its calls do nothing."""
    from rich import progress as rp
    from rich.console import Console

    named = {
        "spinner": rp.SpinnerColumn,
        "bar": rp.BarColumn,
        "count": rp.MofNCompleteColumn,
        "elapsed": rp.TimeElapsedColumn,
        "eta": rp.TimeRemainingColumn,
        "speed": rp.TransferSpeedColumn,
    }
    return rp.Progress(
        *(named[c]() if c in named else rp.TextColumn(c) for c in columns),
        console=Console(file=sys.stderr),
        transient=transient,
        disable=not (enabled and sys.stderr.isatty()),
    )


@contextlib.contextmanager
def task(progress: Any, description: str, total: float | None = None) -> Iterator[Callable]:
    """A task of ``total`` units (None: unknown) of :func:`bars`' ``progress`` and the function
    that advances it; shown complete when the ``with`` ends."""
    tid = progress.add_task(description, total=total)
    yield lambda n: progress.advance(tid, n)
    progress.update(tid, completed=total if total is not None else 1, total=total or 1)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable]:
    """One counting bar, gone when done (evaluation): ``advance(n)`` after ``n`` units."""
    columns = ("[progress.description]{task.description}", "bar", "count", "eta")
    with bars(enabled and total > 0, *columns, transient=True) as p:
        with task(p, description, total) as advance:
            yield advance


class _Stderr(logging.Handler):
    """A record as one line on the stderr of the moment (pytest and rich's live bar swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show moelab's log messages (``level`` and above) as bare lines on stderr, as a command's
    own output; calling it again changes nothing."""
    logger = logging.getLogger("moelab")
    logger.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())


def stderr_log_level() -> int | None:
    """The level :func:`log_to_stderr` set in this process, or None if it was not called: what a
    worker process (spawned, so without its parent's handlers) passes on to show the same."""
    logger = logging.getLogger("moelab")
    return logger.level if any(isinstance(h, _Stderr) for h in logger.handlers) else None
