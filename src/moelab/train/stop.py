"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, then stop.
docs/training.md (*Stopping*) is the one account of the grace period (``MOELAB_STOP_GRACE_S``),
a second signal and the exit codes. The first signal only records a request, which the
training loop honours at the next step boundary (:class:`TrainingStopped`).
"""

from __future__ import annotations

import _thread
import os
import signal
import threading

GRACE_S = 20.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Whether a second signal stops at once. A study's worker process sets it False: there the
# study relays the signal it got to every worker, which may already have had the same one from
# the process group (Ctrl-C, a scheduler's SIGTERM), and a duplicate must not cost the checkpoint.
REPEAT_STOPS_AT_ONCE = True
# A stop signal the caller noted before training began (a study worker's handler between runs):
# training then stops at its first step boundary.
PENDING: int | None = None


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after saving its state; ``str()`` is the one line to print.
    A KeyboardInterrupt, so library callers (a notebook, the study) treat it as Ctrl-C."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        # A study's worker process sends it back to the study: pickle both arguments.
        return (type(self), (str(self), self.signum))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by this signal"


def grace_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("MOELAB_STOP_GRACE_S", GRACE_S)))
    except ValueError:
        return GRACE_S


class StopRequest:
    """``with StopRequest() as stop:`` installs the handlers (main thread only; elsewhere, e.g.
    a notebook's worker thread, signals keep their usual effect); ``stop.at_boundary()`` is
    the signal number once one asked to stop, else None."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._delivered = False  # at_boundary has handed the signal to the training loop
        self._old: dict[int, object] = {}
        self._timer: threading.Timer | None = None
        self._expired = False  # the grace period ran out before a step boundary

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            self.signum = PENDING
        return self

    def __exit__(self, *exc) -> None:
        self._cancel_timer()
        old_handlers, self._old = self._old, {}
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
        # A signal that came after the last step boundary was never acted on: hand it to the
        # handler it displaced when that is the caller's own (a study worker's, which then starts
        # no further run); under the default action the finished run has nothing left to save.
        pending = old_handlers.get(self.signum) if self.signum is not None else None
        own = callable(pending) and pending is not signal.default_int_handler
        if own and not self._delivered:
            self._delivered = True
            pending(self.signum, None)

    def _handle(self, signum: int, frame) -> None:
        if self._expired:  # the grace timer's interrupt: stop now, with the signal's own code
            stopped_by = self.signum or signum
            self._delivered = True
            self.__exit__()
            raise TrainingStopped(
                f"stopped by {signal.Signals(stopped_by).name}: the step did not end within "
                f"{grace_seconds():g} s, so there is no checkpoint at it; the newest checkpoint "
                "on disk is intact and resuming starts there",
                stopped_by,
            )
        if self.signum is not None and not REPEAT_STOPS_AT_ONCE:
            return  # a duplicate: the grace timer still bounds the wait
        if self.signum is not None:  # asked twice: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        grace = grace_seconds()
        # os.write, not print: a handler that prints while the main thread prints raises
        # "reentrant call" on the shared stream.
        os.write(
            2,
            f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then "
            f"stopping (within {grace:.0f} s; send it again to stop at once)\n".encode(),
        )
        # The timer interrupts the main thread through this same handler (interrupt_main
        # simulates SIGINT), which then stops at once: also where a repeat is ignored.
        self._timer = threading.Timer(grace, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self._expired = True
        _thread.interrupt_main()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def at_boundary(self) -> int | None:
        """Called once per step boundary: the pending signal (the grace timer is stopped:
        the checkpoint is being written now), or None."""
        if self.signum is not None:
            self._cancel_timer()
            self._delivered = True
        return self.signum
