"""What reaches the terminal from library code. Progress bars on stderr (rich) for prepare,
train and eval: drawn only when the caller asks for them and stderr is a terminal; otherwise rich
is not even imported and every call does nothing. Messages go through :mod:`logging` (logger
``moelab.*``); :func:`log_to_stderr` (the CLI, a study worker) shows them one line each on
stderr, above a bar while one is drawn (rich redirects stderr then)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any


def _column(name: str) -> Any:
    from rich import progress as rp

    named = {
        "spinner": rp.SpinnerColumn,
        "bar": rp.BarColumn,
        "count": rp.MofNCompleteColumn,
        "elapsed": rp.TimeElapsedColumn,
        "eta": rp.TimeRemainingColumn,
        "speed": rp.TransferSpeedColumn,
    }
    return named[name]() if name in named else rp.TextColumn(name)


class Bars:
    """A rich ``Progress`` with ``columns`` (a name of :func:`_column` or a text template such as
    ``"{task.description}"``), started on ``with`` or at once with ``start=True``."""

    def __init__(self, enabled: bool, *columns: str, transient: bool = False):
        self.live: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.live = Progress(
                *map(_column, columns), console=Console(file=sys.stderr), transient=transient
            )

    def __enter__(self) -> Bars:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def add(self, description: str, total: float | None = None, **fields: Any) -> Any:
        """A new task's id (``completed=`` and the templates' ``task.fields`` go in ``fields``)."""
        return None if self.live is None else self.live.add_task(description, total=total, **fields)

    def update(self, task: Any, **changes: Any) -> None:
        if self.live is not None:
            self.live.update(task, **changes)

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[[int], None]]:
        """A task of ``total`` units (None: unknown) and the function that advances it; shown
        complete when the ``with`` ends."""
        if self.live is None:
            yield lambda n: None
            return
        tid = self.live.add_task(description, total=total)
        yield lambda n: self.live.advance(tid, n)
        self.live.update(tid, completed=total if total is not None else 1, total=total or 1)


@contextlib.contextmanager
def progress_bar(
    total: int, description: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """One counting bar, gone when done (evaluation): ``advance(n)`` after ``n`` units."""
    columns = ("[progress.description]{task.description}", "bar", "count", "eta")
    with (
        Bars(enabled and total > 0, *columns, transient=True) as bars,
        bars.task(description, total) as advance,
    ):
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
