"""moelab.progress: the bars draw on a real terminal (a pty) and nowhere else; log lines reach
stderr once each, above a bar while one is drawn."""

from __future__ import annotations

import logging
import os
import pty
import sys

from moelab.progress import bars, log_to_stderr, progress_bar, task
from moelab.train.progress import ProgressBar


def _read_all(fd: int) -> str:
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def test_bars_draw_on_a_terminal_and_log_lines_go_above(monkeypatch):
    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as term:
        monkeypatch.setattr(sys, "stderr", term)
        monkeypatch.setenv("COLUMNS", "120")
        log_to_stderr()
        with progress_bar(3, "ppl books") as advance:
            advance(3)
        with bars(True, "{task.description}", "speed") as p, task(p, "tokenizing x", 10) as go:
            go(10)
        bar = ProgressBar(5, 1, enabled=True, title="tiny-moe")
        bar.update(4, 3.25, 1234.0)
        logging.getLogger("moelab.train.trainer").info("cooldown 4 -> 5: books 3.100")
        bar.close()
        term.flush()
    out = _read_all(master)
    os.close(master)
    assert "ppl books" in out and "tokenizing x" in out
    assert "tiny-moe" in out and "loss 3.2500" in out and "1,234 tok/s" in out
    assert out.count("cooldown 4 -> 5: books 3.100") == 1


def test_no_terminal_no_bar_and_one_line_per_message(capsys):
    with progress_bar(3, "ppl books") as advance:
        advance(3)
    bar = ProgressBar(5, 1, enabled=True, title="tiny-moe")
    assert bar._bars.disable  # stderr is not a terminal here: nothing is drawn
    bar.update(2, 1.0, 10.0)
    log_to_stderr()
    log_to_stderr()  # twice: still one handler, one line
    logging.getLogger("moelab.lock").warning("note: taken over")
    bar.close()
    err = capsys.readouterr().err
    assert err == "note: taken over\n"


def test_a_study_worker_shows_the_log_lines_its_parent_shows(capfd):
    """Study workers are spawned (no handlers inherited): the level the parent's log_to_stderr set
    travels in the initializer's arguments, and with none the worker stays quiet."""
    import concurrent.futures as cf
    import multiprocessing

    from moelab.progress import stderr_log_level
    from moelab.study.run.sweep import _init_worker

    note = logging.getLogger("moelab.train.trainer").info
    log_to_stderr()
    for level in (stderr_log_level(), None):
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(1, ctx, _init_worker, (os.getpid(), None, level)) as pool:
            pool.submit(note, f"resuming at level {level}").result()
    err = capfd.readouterr().err
    assert f"resuming at level {logging.INFO}\n" in err and "level None" not in err
