"""Process group and device mesh from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; SLURM's ``srun`` sets the same):
:func:`setup_from_env` makes the process group (gloo on CPU, NCCL on CUDA) with a timeout on
every collective, so a rank that dies or disagrees ends the job with one line instead of a hang
(docs/distributed.md, *Failing fast*). The mesh is ``("edp", "ep")``: ranks
``g * ep .. g * ep + ep - 1`` form expert group ``g``, and ``edp`` joins the ranks holding the
same experts (docs/distributed.md, *Layout*).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from moelab.devices import pick_device
from moelab.errors import MoelabError
from moelab.parallel.options import ParallelConfig


@dataclass
class Topology:
    """Where this process sits: ``rank`` of ``world``; expert group of ``ep`` ranks in which it
    is ``ep_rank``; ``edp = world // ep`` copies of every expert group."""

    rank: int
    world: int
    local_rank: int
    ep: int
    device: torch.device
    mesh: DeviceMesh | None = None
    _flat_mesh: DeviceMesh | None = field(default=None, repr=False)

    @property
    def flat_mesh(self) -> DeviceMesh:
        """All ranks in one dimension (FSDP of a dense model); built once, then reused."""
        if self._flat_mesh is None:
            self._flat_mesh = init_device_mesh(self.device.type, (self.world,))
        return self._flat_mesh

    @property
    def edp(self) -> int:
        return self.world // self.ep

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ep_group(self):
        return None if self.mesh is None else self.mesh.get_group("ep")

    @property
    def edp_group(self):
        return None if self.mesh is None else self.mesh.get_group("edp")


def env_world() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MoelabError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun"
        ) from None


def default_ep(world: int, n_experts: int) -> int:
    """The largest expert-group size that divides both the world and the expert count."""
    return math.gcd(world, n_experts) if n_experts > 0 else 1


def check_ep(ep: int, world: int, n_experts: int) -> None:
    if ep < 1 or world % ep:
        raise MoelabError(
            f"expert-parallel degree {ep} does not divide the world size {world}; "
            f"choose a divisor of {world}"
        )
    if n_experts and n_experts % ep:
        raise MoelabError(
            f"expert-parallel degree {ep} does not divide model.n_experts={n_experts}; "
            f"choose a divisor of both (e.g. {default_ep(world, n_experts)})"
        )


def init_process_group(rank: int, world: int, *, backend: str, timeout_s: float) -> None:
    """Initialise the default process group (idempotent for the same world)."""
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise MoelabError(
                f"a process group of size {dist.get_world_size()} already exists; "
                f"cannot start one of size {world}"
            )
        return
    kwargs = {}
    if backend == "nccl" and torch.cuda.is_available():
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )


def build_mesh(topo: Topology) -> DeviceMesh:
    """The ("edp", "ep") mesh: expert groups are consecutive ranks (on one node when possible,
    where the all-to-all is cheapest)."""
    return init_device_mesh(topo.device.type, (topo.edp, topo.ep), mesh_dim_names=("edp", "ep"))


def setup_from_env(
    n_experts: int = 0,
    *,
    ep: int | None = None,
    device: str = "auto",
    timeout_s: float | None = None,
) -> Topology:
    """Initialise torch.distributed from torchrun's variables and build the mesh.

    ``ep`` defaults to :func:`default_ep`; ``device="auto"`` takes ``cuda:LOCAL_RANK`` when CUDA
    is present (NCCL), else CPU (gloo). ``timeout_s`` (default ``MOELAB_DIST_TIMEOUT_S`` or 300)
    bounds every collective: a dead or stuck rank makes the others fail after it.
    """
    world = env_world()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if world > 1 and missing:
        raise MoelabError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node=N -m moelab train ...`"
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if pick_device(device).type == "cuda":  # one GPU per process: this one's local rank
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    ep = default_ep(world, n_experts) if ep is None else ep
    check_ep(ep, world, n_experts)
    topo = Topology(rank=rank, world=world, local_rank=local_rank, ep=ep, device=dev)
    if timeout_s is None:  # MOELAB_DIST_TIMEOUT_S, else the parallel section's default
        timeout_s = ParallelConfig().with_env()[0].timeout_s
    init_process_group(rank, world, backend=backend, timeout_s=timeout_s)
    topo.mesh = build_mesh(topo)
    return topo


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_COMM_FAILURE_HINTS = (
    "connection closed",
    "connection reset",
    "connection refused",
    "broken pipe",
    "timed out",
    "timeout",
    "gloo",
    "nccl",
)


def is_comm_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because a peer died, hung or disagreed."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(h in text for h in _COMM_FAILURE_HINTS)


@contextlib.contextmanager
def fail_fast(rank: int, world: int, timeout_s: float):
    """Turn a failed collective into one clear :class:`MoelabError` line (the CLI exits 2, and
    torchrun then stops the job) instead of a backend traceback."""
    try:
        yield
    except Exception as e:
        if isinstance(e, MoelabError) or not is_comm_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # drop the backend's source path
        raise MoelabError(
            f"rank {rank} of {world}: a collective failed ({first}); another rank probably "
            f"died or stopped responding (see its output; collectives time out after "
            f"{timeout_s:g} s: parallel.timeout_s)"
        ) from None
