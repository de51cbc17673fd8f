"""Checkpoints of a run of several processes (used by :class:`moelab.train.Trainer` when it
holds a :class:`~moelab.parallel.launch.Topology`): every rank writes its own shards of the
weights and optimizer state into ``sharded/`` in the background, rank 0 adds ``state.pt`` and
``meta.json`` once every shard is written (:func:`moelab.train.checkpoint.finish_sharded`); no
rank gathers full weights or optimizer state. docs/distributed.md (*Checkpoints*) is the one
account of the files, the staging folder and resuming at any world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moelab.errors import MoelabError
from moelab.parallel import dcp
from moelab.parallel.launch import Topology
from moelab.train import checkpoint as ckpt_io


class ShardedSaves:
    """The checkpoint being written in the background, if any. Every method is collective."""

    def __init__(self, run_dir: Path, topo: Topology, keep_last: int):
        self.run_dir, self.topo, self.keep_last = run_dir, topo, keep_last
        self._pending: tuple | None = None
        self._group = None  # the background writes' own collectives

    def start(self, step: int, model, optimizer, state: dict, meta: dict) -> None:
        """Finish the previous save, then start writing checkpoint ``step`` into a hidden
        staging folder: every rank its shards, in the background."""
        self.finish()
        is_main = self.topo.rank == 0
        name = [ckpt_io.staging_dir(self.run_dir, step).name if is_main else None]
        dist.broadcast_object_list(name, src=0)
        staging = self.run_dir / ckpt_io.CHECKPOINTS / name[0]
        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        future = dcp.save_sharded(
            staging / ckpt_io.SHARDED,
            model,
            optimizer,
            process_group=self._group,
            asynchronous=True,
        )
        meta = {**meta, "world": self.topo.world, "ep": self.topo.ep}
        self._pending = (future, staging, step, state, meta)

    def finish(self) -> None:
        """Wait for the checkpoint being written; rank 0 then records it and moves it into
        place."""
        if self._pending is None:
            return
        future, staging, step, state, meta = self._pending
        self._pending = None
        if future is not None:
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - any failure of the write: one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise MoelabError(
                    f"checkpoint step {step}: writing its shards failed ({first}); "
                    f"{ckpt_io.intact_note(self.run_dir)}"
                ) from None
        if self.topo.rank == 0:
            ckpt_io.finish_sharded(self.run_dir, staging, step, state, meta, self.keep_last)
        dist.barrier()


def restore(path: Path, model: nn.Module, optimizer, state: dict[str, Any]) -> None:
    """Load checkpoint ``path`` into a parallelised model and its optimizer: its shards (any
    world size and expert-parallel degree), or the full files of a one-process checkpoint."""
    if dcp.is_sharded_checkpoint(path / ckpt_io.SHARDED):
        dcp.load_sharded(path / ckpt_io.SHARDED, model, optimizer)
        return
    from safetensors.torch import load_file

    named = optimizer_state_to_named(state["optimizer"], model, optimizer)
    dcp.load_full_state(model, optimizer, load_file(str(path / ckpt_io.WEIGHTS)), named)


def optimizer_state_to_named(
    indexed: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """A single-process ``optimizer.state_dict()`` (parameters numbered in group order) ->
    the name-keyed format of torch.distributed.checkpoint.state_dict, for ``optimizer`` over
    ``model``'s parameters (same grouping as the single-process optimizer that wrote it)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in indexed["param_groups"]]
    state = {names[i]: value for i, value in indexed["state"].items()}
    return {"state": state, "param_groups": groups}
