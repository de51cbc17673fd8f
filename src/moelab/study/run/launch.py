"""Where a study's runs execute: the device sets of ``moelab study --jobs N --devices ...``,
the CPU threads of each job, and the torchrun launch of a run that trains on several devices.

A job is one worker process of the study (``workers`` in the study file, ``--jobs`` on the
command line). Given device sets, each job owns one set for its whole life
(``CUDA_VISIBLE_DEVICES``): a run on a set of one device trains inside the worker, as on CPU; a
run on a set of several is launched as ``torchrun --standalone --nproc-per-node K -m moelab
train`` (docs/distributed.md), and the worker evaluates it afterwards on the set's first device.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from moelab.errors import MoelabError

# The trainer's divergence message (train/trainer.py, TrainingDiverged): under torchrun the
# error crosses a process boundary as text, and this is how the study recognises it.
DIVERGED_MARK = "non-finite losses or gradients in a row"


def _indices(text: str, flag: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())):
            raise MoelabError(
                f"{flag} {text!r}: expected CUDA device indices such as 0,1 or ranges such as 0-3"
            )
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise MoelabError(f"{flag} {text!r}: range {part} runs backwards")
        out += [str(i) for i in range(first, last + 1)]
    return out


def device_sets(specs: list[str], jobs: int | None) -> list[list[str]]:
    """``--devices`` values as one device set per job.

    Each value is one set (``--devices 0,1 --devices 2,3``: two jobs on two GPUs each). A single
    value with ``--jobs N`` is cut into N equal consecutive sets (``--devices 0-7 --jobs 4``).
    """
    sets = [_indices(s, "--devices") for s in specs]
    if not sets:
        return []
    if len(sets) == 1 and jobs is not None and jobs > 1:
        only = sets[0]
        if len(only) % jobs:
            raise MoelabError(
                f"--devices {specs[0]}: {len(only)} devices do not split into {jobs} equal sets "
                f"(--jobs {jobs})"
            )
        size = len(only) // jobs
        sets = [only[i : i + size] for i in range(0, len(only), size)]
    elif jobs is not None and jobs != len(sets):
        raise MoelabError(
            f"--devices: {len(sets)} device sets for --jobs {jobs}; give one set per job, or "
            "one list to split"
        )
    flat = [d for s in sets for d in s]
    for i, d in enumerate(flat):
        if d in flat[:i]:
            raise MoelabError(f"--devices: device {d} is in two sets; a job owns its devices")
    return sets


def check_devices_exist(sets: list[list[str]]) -> None:
    """Refuse device sets this machine cannot run, before anything is written."""
    import torch

    if not torch.cuda.is_available():
        raise MoelabError("--devices: CUDA is not available here; leave --devices out on CPU")
    have = torch.cuda.device_count()
    wanted = max(int(d) for s in sets for d in s)
    if wanted >= have:
        raise MoelabError(f"--devices: device {wanted} does not exist (this machine has {have})")


def train_command(config: Path, run_dir: Path, nproc: int) -> list[str]:
    """The command that trains one run on ``nproc`` processes of this node: torchrun (as
    ``python -m torch.distributed.run``, the same program, found through this interpreter)
    around ``moelab train``. ``--standalone`` picks a free rendezvous port, so several such
    jobs can share a node."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    train = ["-m", "moelab", "train", str(config), "--out", str(run_dir), "--no-progress"]
    return [*torchrun, f"--nproc-per-node={nproc}", *train]


def run_torchrun(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``command`` (from :func:`train_command`), its stderr passed through. A SIGTERM or
    SIGINT this process gets meanwhile is relayed to torchrun, which relays it to its ranks:
    they finish their step and save. Raises ``TrainingDiverged`` with the trainer's message
    when the run diverged, ``TrainingStopped`` when it stopped on a signal, and
    MoelabError on any other failure (the run's own output says which)."""
    from moelab.train.stop import TrainingStopped
    from moelab.train.trainer import TrainingDiverged

    noted: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda signum, frame: noted.append(signum))
    diverged: list[str] = []
    try:
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                if DIVERGED_MARK in line:
                    diverged.append(line.strip().split("error: ", 1)[-1])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        relayed = False
        while proc.poll() is None:
            if noted and not relayed:
                relayed = True
                proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        reader.join(timeout=5)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if proc.returncode == 0:
        return
    if diverged:
        raise TrainingDiverged(diverged[0])
    run = command[command.index("--out") + 1]
    if noted:
        raise TrainingStopped(f"{run}: stopped by {signal.Signals(noted[0]).name}", noted[0])
    raise MoelabError(f"training {run} under torchrun exited with {proc.returncode} (see above)")
