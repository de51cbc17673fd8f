"""The training loop on many processes: :class:`moelab.train.Trainer` with its distributed seams
filled in (model wrapping, reductions, gradient norm, collective checkpoints) from the mechanisms
of :mod:`moelab.parallel`, and :func:`train_distributed`, one rank's share of a torchrun job
(``torchrun ... -m moelab train CONFIG.yaml``).

Checkpoints keep the single-process layout, so everything that reads runs keeps working:
``checkpoints/step_XXXXXXXX/`` holds ``model.safetensors`` (full weights, gathered to rank 0),
``state.pt`` (step, RNG, data position and the *full* optimizer state in the single-process
format, so a one-process run can resume it), ``meta.json`` (plus ``world`` and ``ep``) and
``sharded/``: a torch.distributed.checkpoint folder of the sharded weights and optimizer state
that every rank writes its own part of and that any world size or expert-parallel degree can
load. Resuming prefers ``sharded/`` and falls back to the full files (a checkpoint written by one
process).
"""

from __future__ import annotations

import os
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
from moelab.train.rng import set_rng_state
from moelab.train.rundir import claim_run_dir
from moelab.train.trainer import Trainer

SHARDED = "sharded"


class _FullWeights(nn.Module):
    """Presents gathered full weights through ``state_dict()`` for the checkpoint writer."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self._tensors = tensors

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return dict(self._tensors)


def optimizer_state_to_indexed(named: dict[str, Any]) -> dict[str, Any]:
    """Name-keyed optimizer state (torch.distributed.checkpoint.state_dict) -> the format of a
    single-process ``optimizer.state_dict()`` (parameters numbered in group order)."""
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(fqn, len(index)) for fqn in group["params"]]
        groups.append({**group, "params": ids})
    state = {index[fqn]: value for fqn, value in named["state"].items()}
    return {"state": state, "param_groups": groups}


def optimizer_state_to_named(
    indexed: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The inverse, for ``optimizer`` over ``model``'s parameters (same grouping as the
    single-process optimizer that wrote ``indexed``)."""
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
        """Collective: every rank writes its DCP shards; rank 0 writes the full files and moves
        the shards into the checkpoint folder."""
        root = self.run_dir / ckpt_io.CHECKPOINTS
        # A hidden temporary name: the trainer's start-up clean-up removes it if a save dies.
        staging_name = [f".{SHARDED}-step_{step:08d}.tmp-{os.getpid()}"]
        dist.broadcast_object_list(staging_name, src=0)
        staging = root / staging_name[0]
        dcp.save_sharded(staging, model, optimizer)
        weights = dcp.full_model_state(model)
        optim_state = dcp.full_optimizer_state(model, optimizer)
        if self.is_main:
            state = self._train_state(step, optimizer, nonfinite_total)
            state["optimizer"] = optimizer_state_to_indexed(optim_state)
            final = ckpt_io.save_checkpoint(
                self.run_dir,
                step,
                _FullWeights(weights),
                state,
                {**meta, "world": self.world, "ep": self.topo.ep},
                self.cfg.train.keep_last,
            )
            os.replace(staging, final / SHARDED)
        dist.barrier()

    def _train_state(self, step: int, optimizer, nonfinite_total: int) -> dict[str, Any]:
        gens = {}
        for name, mod in self.model.named_modules():
            if isinstance(mod, MoeFFN) and mod.generator is not None:
                gens[name] = mod.generator.get_state()
        from moelab.train.rng import rng_state

        return {
            "step": step,
            "tokens": self.budget.tokens_at(step),
            "optimizer": None,  # filled by save_checkpoint with the gathered full state
            "rng": rng_state(),
            "moe_generators": gens,
            "data": {"seed": self.cfg.train.seed, "next_step": step + 1},
            "nonfinite_total": nonfinite_total,
            "world": self.world,
        }

    def _restore(self, path: Path, optimizer) -> dict[str, Any]:
        model = self.model
        state = ckpt_io.load_train_state(path)
        if dcp.is_sharded_checkpoint(path / SHARDED):
            dcp.load_sharded(path / SHARDED, model, optimizer)
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
