"""Launch a function on N real processes joined by a gloo process group (CPU), for tests.

Each process gets ``fn(rank, world, *args)`` inside an initialised process group whose
collectives time out after ``timeout_s``, so a mistake fails the test instead of hanging it.
An exception in any rank fails the launch with that rank's traceback.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, timeout_s: float, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from moelab.parallel.launch import init_process_group, teardown

    init_process_group(rank, world, backend="gloo", timeout_s=timeout_s)
    try:
        fn(rank, world, *args)
    finally:
        teardown()


def run_ranks(fn, world: int, *args, timeout_s: float = 30.0) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` spawned processes; raise if any fails."""
    mp.start_processes(
        _entry,
        args=(fn, world, free_port(), timeout_s, args),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
