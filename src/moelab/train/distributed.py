"""The training loop on many processes: :class:`moelab.train.Trainer` with its distributed seams
filled in (model wrapping, reductions, gradient norm, collective checkpoints) from the mechanisms
of :mod:`moelab.parallel`, and :func:`train_distributed`, one rank's share of a torchrun job
(``torchrun ... -m moelab train CONFIG.yaml``).

Checkpoints are sharded only: every rank writes its own shards of the weights and optimizer
state into ``checkpoints/step_XXXXXXXX/sharded/`` (torch.distributed.checkpoint, in a
background thread over a process group of its own, while training goes on), and rank 0 adds
``state.pt`` (step, RNG, data position; no optimizer state) and ``meta.json`` (shard sizes, the
sha256 of DCP's metadata) once every shard is written (:func:`moelab.train.checkpoint.
finish_sharded`). No rank gathers full weights or optimizer state. Everything that reads runs
loads the shards in one process (``load_model``, eval, export, a one-process resume);
``moelab consolidate`` writes one safetensors file when wanted. Resuming on several processes
loads ``sharded/`` at any world size; a checkpoint of one process (full files) is loaded by
every rank.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from moelab.model import MoeFFN, build_model
from moelab.parallel import dcp
from moelab.parallel.expert_parallel import ExpertParallelMoeFFN
from moelab.parallel.fsdp import grad_norm, wrap_for_parallel
from moelab.parallel.launch import Topology, fail_fast, setup_from_env, teardown
from moelab.parallel.telemetry import reduce_moe_rows
from moelab.train import checkpoint as ckpt_io
from moelab.train.rng import rng_state, set_rng_state
from moelab.train.rundir import claim_run_dir
from moelab.train.trainer import Trainer


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


class DistributedTrainer(Trainer):
    """Trainer for one rank of a torchrun job (``topo`` from :func:`setup_from_env`)."""

    def __init__(
        self,
        cfg,
        run_dir: str | Path,
        topo: Topology,
        *,
        progress: bool = True,
    ):
        super().__init__(
            cfg, run_dir, progress=progress, rank=topo.rank, world=topo.world, device=topo.device
        )
        self.topo = topo
        self._pending = None  # the checkpoint being written in the background
        self._save_group = None

    # -- seams ----------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        # A block returns its MoeOutput, whose y_BTD is a view; FSDP2 warns that an in-place op
        # on it would skip its hook. The model only reads it (x + dropout(y)), so it is safe.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        model = build_model(self.cfg.model, seed=self.cfg.train.seed).to(self.device)
        par = self.cfg.parallel
        return wrap_for_parallel(
            model,
            self.topo,
            expert_grad=par.expert_grad,
            param_dtype=torch.bfloat16 if par.param_dtype == "bf16" else None,
            reduce_dtype=torch.bfloat16 if par.reduce_dtype == "bf16" else torch.float32,
        )

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().clone()
        dist.all_reduce(y)
        return y / self.world

    def all_finite(self, finite: torch.Tensor) -> bool:
        """One decision for all ranks: every rank's loss and gradients are finite."""
        flag = finite.detach().to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def grad_norm(self, params: list[nn.Parameter]) -> torch.Tensor:
        return grad_norm(params).to(self.device)

    def run(self) -> dict[str, Any]:
        # Every rank checks the folder before anyone writes (a refusal is then the same clear
        # error on every rank); rank 0 writes config.yaml and the tokenizer before the others
        # look again.
        claim_run_dir(self.cfg, self.run_dir, write=False)
        dist.barrier()
        if self.is_main:
            claim_run_dir(self.cfg, self.run_dir, write=True)
        dist.barrier()
        return super().run()

    def _row(self, step, lr, acc, n_acc, skipped, interval_tokens, interval_time, telemetry):
        for key in ("ce", "aux", "z"):  # losses of the whole batch, not of this rank's rows
            acc[key] = self.reduce_mean(acc[key])
        row = super()._row(step, lr, acc, n_acc, skipped, interval_tokens, interval_time, telemetry)
        if "moe" in row:
            # The paper's all-to-all time: seconds this interval (forward + backward), then
            # averaged over ranks with the other per-layer figures.
            timers = {
                m.layer: m.timer.take()
                for m in self.model.modules()
                if isinstance(m, ExpertParallelMoeFFN)
            }
            for layer in row["moe"]:
                layer["all_to_all_s"] = timers.get(layer["layer"], 0.0)
            row["moe"] = reduce_moe_rows(row["moe"], self.device)
        return row

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, step: int, model, optimizer, meta: dict, nonfinite_total: int):
        """Collective: every rank starts writing its DCP shards into a hidden staging folder
        (in the background); rank 0 completes the checkpoint when they are written, at the
        next checkpoint or at the end of the run (:meth:`finish_checkpoint`)."""
        self.finish_checkpoint()
        name = [ckpt_io.staging_dir(self.run_dir, step).name if self.is_main else None]
        dist.broadcast_object_list(name, src=0)
        staging = self.run_dir / ckpt_io.CHECKPOINTS / name[0]
        if self._save_group is None:  # the background writes' own collectives
            self._save_group = dist.new_group(backend="gloo")
        future = dcp.save_sharded(
            staging / ckpt_io.SHARDED,
            model,
            optimizer,
            process_group=self._save_group,
            asynchronous=True,
        )
        state = {**self._train_state(step, optimizer, nonfinite_total), "optimizer": None}
        meta = {**meta, "world": self.world, "ep": self.topo.ep}
        self._pending = (future, staging, step, state, meta)

    def finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written, if any; rank 0 then records and moves it
        into place. Collective."""
        if self._pending is None:
            return
        future, staging, step, state, meta = self._pending
        self._pending = None
        if future is not None:
            future.result()
        if self.is_main:
            ckpt_io.finish_sharded(
                self.run_dir, staging, step, state, meta, self.cfg.train.keep_last
            )
        dist.barrier()

    def _train_state(self, step: int, optimizer, nonfinite_total: int) -> dict[str, Any]:
        gens = {}
        for name, mod in self.model.named_modules():
            if isinstance(mod, MoeFFN) and mod.generator is not None:
                gens[name] = mod.generator.get_state()
        return {
            "step": step,
            "tokens": self.budget.tokens_at(step),
            "optimizer": None,  # in the shards
            "rng": rng_state(),
            "moe_generators": gens,
            "data": {"seed": self.cfg.train.seed, "next_step": step + 1},
            "nonfinite_total": nonfinite_total,
            "world": self.world,
        }

    def _restore(self, path: Path, optimizer) -> dict[str, Any]:
        model = self.model
        state = ckpt_io.load_train_state(path)
        if dcp.is_sharded_checkpoint(path / ckpt_io.SHARDED):
            dcp.load_sharded(path / ckpt_io.SHARDED, model, optimizer)
        else:  # written by one process: full weights and a single-process optimizer state
            from safetensors.torch import load_file

            dcp.load_full_model_state(model, load_file(str(path / ckpt_io.WEIGHTS)))
            named = optimizer_state_to_named(state["optimizer"], model, optimizer)
            dcp.load_full_optimizer_state(model, optimizer, named)
        set_rng_state(state["rng"])
        for name, mod in model.named_modules():
            if name in state.get("moe_generators", {}):
                mod.generator.set_state(state["moe_generators"][name])
        return state


def train_distributed(run_cfg, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train ``run_cfg`` as this process's rank of the torchrun job in the environment
    (``WORLD_SIZE`` > 1): FSDP2 for the dense parts, expert parallelism for the MoE layers,
    as ``run_cfg.parallel`` says. Every rank returns the run summary; rank 0 writes the files."""
    par = run_cfg.parallel
    topo = setup_from_env(
        run_cfg.model.n_experts, ep=par.ep, device=run_cfg.train.device, timeout_s=par.timeout_s
    )
    try:
        with fail_fast(topo.rank, topo.world, par.timeout_s):
            trainer = DistributedTrainer(run_cfg, run_dir, topo, progress=progress)
            return trainer.run()
    finally:
        teardown()
