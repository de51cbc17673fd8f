"""A rank that dies ends the job: the surviving rank exits with one clear error line within
the process-group timeout instead of hanging (2 real gloo processes, one SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _parallel_spawn import free_port

pytestmark = pytest.mark.slow

TIMEOUT_S = 10
WORKER = Path(__file__).with_name("_parallel_kill_worker.py")


def test_killing_one_rank_stops_the_other_with_a_clear_error(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "MOELAB_DIST_TIMEOUT_S": str(TIMEOUT_S),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"rank{r}").exists() for r in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "workers never started training"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=TIMEOUT_S + 20)
        took = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 2, err[-2000:]
    assert took < TIMEOUT_S + 10
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    assert "rank 0 of 2: a collective failed" in lines[0]
    assert "another rank probably died" in lines[0]
    assert "Traceback" not in err
