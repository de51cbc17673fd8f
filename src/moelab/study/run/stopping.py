"""Stopping a parallel study on a signal without losing what its workers trained.

The study process and its worker processes share a process group, so Ctrl-C (SIGINT) and a
scheduler's preemption (SIGTERM to the job) reach all of them; ``kill PID`` reaches the study
alone, and a SIGKILLed study reaches its workers only through their parent-death signal. In every
case each worker that is training must finish its step and save a checkpoint (train/stop.py),
and no worker may start another run. So:

- a worker takes a duplicate signal as a duplicate (``REPEAT_STOPS_AT_ONCE = False``), notes a
  signal that arrives outside training and starts no run after one (:func:`start_nothing_new`), and
  stops an evaluation at once (nothing to save: a rerun evaluates the saved run);
- the study relays the signal it got to every worker, waits for them to save (bounded by their
  grace period), and ends with one line naming the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from moelab.train import stop as train_stop
from moelab.train.stop import TrainingStopped

_study_pid: int | None = None
_signal: int | None = None  # the stop signal this worker got outside training
_evaluating = False  # a signal now interrupts the evaluation


def init_worker(parent: int) -> None:
    """Worker initializer: end with the study (Linux: the kernel's parent-death signal, which
    the trainer treats as a stop request), and take stop signals as described above."""
    global _study_pid
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    _study_pid = parent
    train_stop.REPEAT_STOPS_AT_ONCE = False
    for sig in train_stop.SIGNALS:
        signal.signal(sig, _note)
    exit_if_orphaned()  # the study died before the request was made


def _note(signum: int, frame) -> None:
    """A stop signal outside training: if it is the study's death signal, there is nothing to
    save here, so end now (an idle worker would otherwise wait for a task forever); else start
    no further run, stop an evaluation at once, and stop a training that has not yet installed
    its own handler at its first step."""
    global _signal
    exit_if_orphaned()
    _signal = _signal or signum
    train_stop.PENDING = _signal
    if _evaluating:
        raise KeyboardInterrupt


def exit_if_orphaned() -> None:
    """End this worker if the study process is gone: the death signal arrives once, and a
    worker whose training caught it would otherwise go on to its next queued run."""
    if _study_pid is not None and os.getppid() != _study_pid:
        os._exit(1)


def stopped_by(exc: KeyboardInterrupt) -> None:
    """Training in this worker stopped on a signal (the trainer handled it): start no more runs."""
    global _signal
    _signal = _signal or getattr(exc, "signum", None) or signal.SIGTERM


def start_nothing_new(name: str) -> None:
    """Refuse to start run ``name`` after this worker has had a stop signal."""
    if _signal is not None:
        raise TrainingStopped(f"{name}: not started", _signal)


class Evaluating:
    """``with Evaluating(name):`` a stop signal interrupts the evaluation inside."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        global _evaluating
        _evaluating = True
        if _signal is not None:
            raise self._stopped()

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _evaluating
        _evaluating = False
        if exc_type is KeyboardInterrupt and _signal is not None:
            exit_if_orphaned()
            raise self._stopped() from None
        return False

    def _stopped(self) -> TrainingStopped:
        return TrainingStopped(
            f"{self.name}: trained and saved; its evaluation was stopped (a rerun evaluates it)",
            _signal or signal.SIGTERM,
        )


def study_sigterm(signum: int, frame) -> None:
    """The study process's SIGTERM handler while workers run: it raises TrainingStopped as
    SIGINT raises KeyboardInterrupt, so one code path stops the workers (:func:`stop_workers`)."""
    raise TrainingStopped("the study was asked to stop", signum)


def stop_workers(processes: list, grace_s: float) -> None:
    """Relay a stop to every live worker, wait up to ``grace_s`` for each to save and end,
    then kill what is left (a checkpoint on disk is complete: they are written atomically)."""
    for proc in processes:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in processes:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            proc.kill()
