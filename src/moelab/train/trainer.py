"""The training loop: budget, schedule, validation, telemetry, checkpoints, exact resume.

The same :class:`Trainer` trains on one process and as one rank of many: given a
:class:`~moelab.parallel.launch.Topology` (``moelab.train.train`` under torchrun) it builds the
model sharded on each rank (:func:`moelab.parallel.build.build_parallel_model`: meta device,
expert parallelism and FSDP2, each rank initialising its shards), reduces losses and the
finiteness decision over ranks, and writes sharded checkpoints (:mod:`moelab.train.sharded`).
Every rank takes rows ``rank::world`` of the step's global batch (a function of seed and step
only); only rank 0 writes files (``self.is_main``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from moelab.devices import pick_device
from moelab.errors import MoelabError
from moelab.flops import count_params, palm_flops_per_token
from moelab.io import atomic_write_json, no_space_left
from moelab.lock import folder_lock, holds_lock
from moelab.model import build_model
from moelab.train import checkpoint as ckpt_io
from moelab.train.budget import Budget, cooldowns_of, eval_steps, resolve_budget, schedule_of
from moelab.train.config import RunConfig, open_prepared
from moelab.train.cooldown import restore_snapshot, take_snapshot
from moelab.train.metrics import MetricsWriter, checked_rows, truncate_metrics
from moelab.train.optim import build_optimizer, set_lr
from moelab.train.progress import ProgressBar
from moelab.train.rng import rng_state, seed_everything, set_rng_state
from moelab.train.rundir import (
    CONFIG,
    DONE,
    TOKENIZER,
    claim_run_dir,
    clear_stale,
    has_checkpoints,
    read_done,
    read_run_config,
)
from moelab.train.schedule import Cooldown, cooldown_lr
from moelab.train.step import train_step
from moelab.train.stop import StopRequest, TrainingStopped
from moelab.train.telemetry import MoeTelemetry, with_load_balance
from moelab.train.validation import build_eval_sets, evaluate

if TYPE_CHECKING:
    from moelab.parallel.launch import Topology

log = logging.getLogger(__name__)


class TrainingDiverged(MoelabError):
    """Too many non-finite losses or gradients in a row (the CLI exits with code 2)."""


def _flush_denormal_enabled() -> bool:
    """Whether this thread flushes subnormal floats to zero (torch has a setter, no getter)."""
    tiny = torch.tensor([1e-300], dtype=torch.float64)
    return bool((tiny * 1e-10).item() == 0.0)


class Trainer:
    """One run to its budget: on this process (``topo`` None), or as rank ``topo.rank`` of a
    job of ``topo.world`` processes (every rank builds and runs the same Trainer)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        progress: bool = True,
        topo: Topology | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.topo = topo
        self.rank, self.world = (topo.rank, topo.world) if topo is not None else (0, 1)
        self.is_main = self.rank == 0
        self.show_progress = progress and self.is_main
        t = cfg.train
        if t.batch_size % (self.world * t.grad_accum):
            raise MoelabError(
                f"train.batch_size: {t.batch_size} is not divisible by grad_accum x world "
                f"({t.grad_accum} x {self.world})"
            )
        self.device = topo.device if topo is not None else pick_device(t.device)
        self.budget: Budget = resolve_budget(cfg)
        self.schedule = schedule_of(cfg, self.budget)
        self.cooldowns: list[Cooldown] = cooldowns_of(cfg, self.budget)
        self.fork_at = {c.fork_step: c for c in self.cooldowns}
        self.eval_at = set(eval_steps(self.budget.total_steps, t.eval_points))
        self.micro_batch = t.batch_size // (self.world * t.grad_accum)
        self.amp_dtype = torch.bfloat16 if t.dtype == "bf16" else None
        self._saves = None
        if topo is not None:
            from moelab.train.sharded import ShardedSaves

            self._saves = ShardedSaves(self.run_dir, topo, t.keep_last)

    # -- what differs between one process and many ----------------------------------------------

    def build_model(self) -> nn.Module:
        """The model on the device, initialised from ``train.seed``; on several processes
        built sharded (each rank holds and initialises its shards only, to the same values)."""
        if self.topo is None:
            model = build_model(self.cfg.model, seed=self.cfg.train.seed).to(self.device)
            if self.cfg.parallel.activation_checkpointing:
                from moelab.parallel.checkpointing import checkpoint_blocks

                checkpoint_blocks(model)
            return model
        from moelab.parallel.build import build_parallel_model

        # A block returns its MoeOutput, whose y_BTD is a view; FSDP2 warns that an in-place op
        # on it would skip its hook. The model only reads it (x + dropout(y)), so it is safe.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        return build_parallel_model(
            self.cfg.model, self.cfg.train.seed, self.topo, self.cfg.parallel
        )

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (one process: the value itself)."""
        if self.world == 1:
            return x
        y = x.detach().clone()
        dist.all_reduce(y)
        return y / self.world

    def all_finite(self, finite: torch.Tensor) -> bool:
        """One decision for all ranks: the loss and gradients are finite on every rank."""
        if self.world == 1:
            return bool(finite)
        flag = finite.detach().to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def grad_norm(self, params: list[nn.Parameter]) -> torch.Tensor:
        """Global L2 norm of the gradients of several processes (sharded ones included), the
        same on every rank (one process: train_step's own norm of the local gradients)."""
        from moelab.parallel.fsdp import grad_norm

        return grad_norm(params).to(self.device)

    def save_checkpoint(
        self, step: int, model: nn.Module, optimizer, meta: dict[str, Any], nonfinite_total: int
    ) -> None:
        """Called on every rank at a checkpoint step: one process writes the folder; several
        start writing their shards (completed by :meth:`finish_checkpoint`)."""
        state = self._train_state(step, optimizer, nonfinite_total)
        if self._saves is not None:
            self._saves.start(step, model, optimizer, state, meta)
        elif self.is_main:
            ckpt_io.save_checkpoint(
                self.run_dir, step, model, state, meta, self.cfg.train.keep_last
            )

    def finish_checkpoint(self) -> None:
        """Complete a checkpoint still being written (several processes write in the
        background). Collective."""
        if self._saves is not None:
            self._saves.finish()

    # -- helpers --------------------------------------------------------------------------------

    def flops_spent(self, step: int) -> float:
        """Training FLOPs spent once main step ``step`` and every cooldown forked at or before
        it are done: what the run cost, as opposed to the trajectory's ``flops_at(step)``."""
        branch_tokens = sum(c.length for c in self.cooldowns if c.fork_step <= step)
        return self.budget.flops_at(step) + self.budget.flops_at(branch_tokens)

    def _train_step(self, model, batch, optimizer, params, on_moe_stats):
        m = self.cfg.model
        return train_step(
            model,
            batch,
            optimizer,
            params,
            micro_batch=self.micro_batch,
            aux_loss_weight=m.aux_loss_weight,
            z_loss_weight=m.z_loss_weight,
            clip=self.cfg.train.clip,
            autocast=self.autocast,
            on_moe_stats=on_moe_stats,
            all_finite=self.all_finite,
            grad_norm=self.grad_norm if self.world > 1 else None,
        )

    def _cooldown(self, c: Cooldown, model, optimizer, params, stream, eval_sets) -> dict:
        """Run the cooldown branch ``c`` from the current state, validate its end, restore the
        state, and return its metrics row (``annealed``: the rate ended at the floor)."""
        t, budget = self.cfg.train, self.budget
        snap = take_snapshot(model, optimizer)
        ce = torch.zeros((), dtype=torch.float64, device=self.device)
        n_ok, lr, last_ok = 0, t.lr, False
        t0 = time.perf_counter()
        try:
            for j in range(1, c.length + 1):
                lr = cooldown_lr(t.lr, t.min_lr_ratio, j, c.length)
                set_lr(optimizer, lr)
                step = c.fork_step + j
                batch = stream.batch(step, self.rank, self.world).to(self.device)
                res = self._train_step(model, batch, optimizer, params, None)
                last_ok = res.updated
                if res.updated:
                    ce += res.ce_loss.double()
                    n_ok += 1
            val = evaluate(model, eval_sets, self.device, self.autocast)
            loss = float(self.reduce_mean(ce) / n_ok) if n_ok else math.nan
        finally:
            restore_snapshot(model, optimizer, snap)
        return {
            "step": c.end_step,
            "fork_step": c.fork_step,
            "branch": True,
            # Annealed only if the decay really happened: every update of the branch applied.
            "annealed": n_ok == c.length and last_ok,
            "tokens": budget.tokens_at(c.end_step),
            "flops": budget.flops_at(c.end_step),
            "flops_spent": self.flops_spent(c.fork_step),
            "lr": lr,
            "loss": loss,
            "skipped_updates": c.length - n_ok,
            "val_loss": val,
            "wall_s": time.perf_counter() - t0,
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_state(self, step: int, optimizer, nonfinite_total: int) -> dict[str, Any]:
        state = {
            "step": step,
            "tokens": self.budget.tokens_at(step),
            # several processes: in the checkpoint's shards
            "optimizer": optimizer.state_dict() if self.world == 1 else None,
            "rng": rng_state(),
            "data": {"seed": self.cfg.train.seed, "next_step": step + 1},
            "nonfinite_total": nonfinite_total,
        }
        return state if self.world == 1 else {**state, "world": self.world}

    def _restore(self, path: Path, optimizer) -> dict[str, Any]:
        model = self.model
        state = ckpt_io.load_train_state(path)
        if self.topo is not None:
            from moelab.train.sharded import restore

            restore(path, model, optimizer, state)
        elif ckpt_io.is_sharded(path):  # written by several processes: weights and optimizer
            from moelab.parallel.dcp import load_sharded

            load_sharded(path / ckpt_io.SHARDED, model, optimizer)
        else:
            ckpt_io.load_weights(path, model)
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (KeyError, ValueError, TypeError) as e:
                raise MoelabError(
                    f"{path / ckpt_io.STATE}: its optimizer state does not fit this run's model "
                    f"({type(e).__name__}); delete that checkpoint folder to resume from an "
                    "older one"
                ) from None
        set_rng_state(state["rng"])  # older checkpoints' unused "moe_generators" is ignored
        return state

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.world > 1:
            # Every rank checks the folder before anyone writes (a refusal is then the same
            # clear error on every rank); rank 0 writes config.yaml and the tokenizer before
            # the others look again.
            claim_run_dir(self.cfg, self.run_dir, write=False)
            dist.barrier()
            if self.is_main:
                claim_run_dir(self.cfg, self.run_dir, write=True)
            dist.barrier()
        # Denormals slow fp32 CPU training ~10x. The flag is process-wide, so the caller's
        # setting (a notebook, a test process) is restored on the way out; so is the thread count.
        # One process trains in a run folder at a time (docs/training.md). Distributed jobs are
        # one launch, whose ranks share the folder: they take no lock here.
        lock = folder_lock(self.run_dir, "train") if self.world == 1 else contextlib.nullcontext()
        with lock, self._disk_full_is_one_line(), self._threads():
            if self.device.type != "cpu":
                return self._run()
            previous = _flush_denormal_enabled()
            torch.set_flush_denormal(True)
            try:
                return self._run()
            finally:
                torch.set_flush_denormal(previous)

    @contextlib.contextmanager
    def _threads(self):
        """torch's CPU threads as ``train.threads`` says while the run trains (null: as they
        are). One thread is the default: on a machine whose other cores are busy, one thread
        per core is much slower (benchmarks/train_threads.py measures it)."""
        previous = torch.get_num_threads()
        if self.cfg.train.threads is not None:
            torch.set_num_threads(self.cfg.train.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def _disk_full_is_one_line(self):
        """A full disk while writing metrics, done.json or config.yaml: one line naming the
        file and the checkpoint to resume from (checkpoints say so themselves)."""
        try:
            yield
        except OSError as e:
            if not no_space_left(e):
                raise
            where = e.filename or self.run_dir
            raise MoelabError(
                f"no space left on the device holding {where}; {ckpt_io.intact_note(self.run_dir)}"
            ) from None

    def _resume_checks(self, path: Path, data, data_fp: str | None) -> dict[str, Any]:
        """Refuse (before anything is written) a checkpoint this run cannot continue from;
        return its meta.json. The config hash is checked after the weights are restored, so a
        checkpoint of another shape is named by its first mismatching tensor."""
        cfg, run_dir = self.cfg, self.run_dir
        meta = ckpt_io.read_meta(path)
        if meta.get("imported_from") is not None:
            raise MoelabError(
                f"{path}: written by `moelab import` (no optimizer or RNG state), so "
                f"{run_dir} cannot be resumed; evaluate or fine-tune it (moelab eval / "
                "moelab finetune), or train a new run with another --out"
            )
        if not isinstance(meta.get("data_fingerprint"), str | None):
            raise MoelabError(
                f"{path / ckpt_io.META}: data_fingerprint is not a string (edited by hand?); "
                "restore it, or delete that checkpoint folder to resume from an older one"
            )
        if meta.get("data_fingerprint") not in (None, data_fp):
            raise MoelabError(
                f"data.dir: the prepared data in {cfg.data.dir} changed since this run "
                f"started (fingerprint {meta['data_fingerprint'][:12]} -> {str(data_fp)[:12]});"
                " resuming needs the same data, or start a new run"
            )
        ours, theirs = run_dir / TOKENIZER, Path(cfg.data.dir) / TOKENIZER
        if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
            raise MoelabError(
                f"data.dir: {theirs} differs from {ours} (the data was re-prepared with another "
                "tokenizer since this run started); resume on the original data, or start a "
                "new run with another --out"
            )
        return meta

    def _check_config_hash(self, path: Path, meta: dict[str, Any]) -> None:
        want, got = self.cfg.config_hash(), meta.get("config_hash")
        if got in (None, want) or got in self._legacy_hashes():
            return
        raise MoelabError(
            f"{path}: made with another config (config_hash {got} in its "
            f"meta.json, {want} for {self.run_dir / 'config.yaml'}); delete that checkpoint "
            "folder, or resume it in the run it came from"
        )

    def _legacy_hashes(self) -> set[str]:
        """Hashes a checkpoint written before data.dir left the hash may hold: with the data
        folder the run's config.yaml names (where it was trained; not yet rewritten here) or
        the one given now."""
        dirs = {self.cfg.data.dir}
        if (self.run_dir / CONFIG).is_file():
            dirs.add(read_run_config(self.run_dir).data.dir)
        return {self.cfg.legacy_config_hash(d) for d in dirs}

    def _run(self) -> dict[str, Any]:
        cfg, t, budget = self.cfg, self.cfg.train, self.budget
        run_dir = self.run_dir
        resuming = claim_run_dir(cfg, run_dir, write=False)
        done = read_done(run_dir) if resuming else None
        if resuming and done is None and (run_dir / DONE).is_file():
            self._say(f"note: {run_dir / DONE} is damaged; finishing the run again rewrites it")
        if done is not None and done.get("steps") == budget.total_steps:
            self._say(f"{run_dir}: already complete ({budget.total_steps} steps); nothing to do")
            return done
        checked_rows(run_dir)  # a hand-edited metrics.jsonl is refused before any write
        data = open_prepared(cfg.data.dir)
        from moelab.data import TrainStream

        data_fp = getattr(data, "manifest", {}).get("fingerprint")

        stream = TrainStream(data, t.seq_len, t.batch_size, t.seed, weights=cfg.data.weights)
        eval_bs = t.eval_batch_size or self.micro_batch
        eval_sets = build_eval_sets(data, t.seq_len, t.eval_tokens, eval_bs)
        if self.cooldowns and not eval_sets:
            self._say("no validation split in the data: the cooldown branches are skipped")
            self.cooldowns, self.fork_at = [], {}

        seed_everything(t.seed)
        self.model = model = self.build_model()
        model.train()
        optimizer = build_optimizer(model, t)

        start_step, nonfinite_total, resumed_from = 0, 0, None
        last: dict[str, Any] = {}
        val_loss: dict[str, float] = {}
        # Everything that can refuse the run is checked (and the checkpoint restored) before the
        # folder becomes this run's: a refusal leaves RUN_DIR exactly as it was.
        if has_checkpoints(run_dir):
            found, skipped = ckpt_io.newest_valid(run_dir)
            if found is None:
                raise MoelabError(
                    f"{run_dir}: no valid checkpoint to resume from ("
                    + "; ".join(f"{c.path.name}: {r}" for c, r in skipped)
                    + f"); delete {run_dir / ckpt_io.CHECKPOINTS} to start over"
                )
            meta = self._resume_checks(found.path, data, data_fp)
            state = self._restore(found.path, optimizer)
            self._check_config_hash(found.path, meta)
            for bad, reason in skipped:
                self._say(f"checkpoint {bad.path.name} is not valid ({reason}); skipping it")
            start_step = resumed_from = int(state["step"])
            nonfinite_total = int(state.get("nonfinite_total", 0))
            last, val_loss = {"loss": meta.get("train_loss")}, meta.get("val_loss") or {}
            self._say(f"resuming from checkpoint {found.path.name} (step {start_step})")
        claim_run_dir(cfg, run_dir, write=self.is_main)
        if self.is_main:
            clear_stale(run_dir, locked=holds_lock(run_dir))
            truncate_metrics(run_dir, start_step)
            (run_dir / DONE).unlink(missing_ok=True)

        writer = MetricsWriter(run_dir, enabled=self.is_main, tensorboard=t.tensorboard)
        if writer.tensorboard_note:
            self._say(writer.tensorboard_note)
        bar = ProgressBar(
            budget.total_steps, start_step, enabled=self.show_progress, title=cfg.model.name
        )
        m = cfg.model  # the interval's MoE telemetry, flushed into each metrics row
        self.telemetry = MoeTelemetry(m.n_experts, m.top_k, self.device) if m.is_moe else None
        on_moe_stats = self.telemetry.add if self.telemetry is not None else None
        params = [p for p in model.parameters() if p.requires_grad]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        acc = {"ce": zero.clone(), "aux": zero.clone(), "z": zero.clone(), "gnorm": zero.clone()}
        n_acc, skipped_in_interval, nonfinite_run = 0, 0, 0
        interval_time, interval_tokens = 0.0, 0
        t_start = time.perf_counter()
        # Distributed ranks would have to agree on the step to stop at: torchrun's own
        # signal handling applies there.
        stop = StopRequest(enabled=self.world == 1).__enter__()
        try:
            for step in range(start_step + 1, budget.total_steps + 1):
                t0 = time.perf_counter()
                lr = self.schedule(step)
                set_lr(optimizer, lr)
                batch = stream.batch(step, self.rank, self.world).to(self.device, non_blocking=True)
                res = self._train_step(model, batch, optimizer, params, on_moe_stats)
                if res.updated:
                    nonfinite_run = 0
                    acc["ce"] += res.ce_loss.double()
                    acc["aux"] += res.aux_loss.double()
                    acc["z"] += res.z_loss.double()
                    acc["gnorm"] += res.grad_norm.double()
                    n_acc += 1
                else:
                    nonfinite_run += 1
                    nonfinite_total += 1
                    skipped_in_interval += 1
                    self._say(
                        f"step {step}: non-finite loss or gradient "
                        f"(loss {float(res.ce_loss):.4g}, grad norm {float(res.grad_norm):.4g}); "
                        f"update skipped ({nonfinite_run} in a row)"
                    )
                interval_time += time.perf_counter() - t0
                interval_tokens += budget.tokens_per_step

                is_last = step == budget.total_steps
                stopping = stop.at_boundary() is not None and not is_last
                is_eval = step in self.eval_at and bool(eval_sets)
                is_ckpt = (
                    is_last or stopping or (t.checkpoint_every and step % t.checkpoint_every == 0)
                )
                if is_eval:
                    val_loss = evaluate(model, eval_sets, self.device, self.autocast)
                if step % t.log_every == 0 or is_last or is_eval or is_ckpt or nonfinite_run:
                    row = self._row(
                        step, lr, acc, n_acc, skipped_in_interval, interval_tokens, interval_time
                    )
                    if is_eval:
                        row["val_loss"] = val_loss
                        # the last update must have applied for the model to be the decayed one
                        row["annealed"] = (
                            is_last and self.schedule.ends_annealed() and nonfinite_run == 0
                        )
                    writer.write(row)
                    last = row
                    bar.update(step, row.get("loss"), row["tokens_per_s"])
                    for v in acc.values():
                        v.zero_()
                    n_acc, skipped_in_interval, interval_time, interval_tokens = 0, 0, 0.0, 0
                else:
                    bar.update(step)
                if nonfinite_run >= t.max_nonfinite_in_row:
                    self.finish_checkpoint()
                    good = ckpt_io.newest_valid(run_dir)[0]
                    where = f"the last good checkpoint is {good.path}" if good else "no checkpoint"
                    raise TrainingDiverged(
                        f"training stopped at step {step}: {nonfinite_run} non-finite losses or "
                        f"gradients in a row (train.max_nonfinite_in_row); {where}; lower "
                        "train.lr, set train.clip, or use train.dtype=fp32"
                    )
                if step in self.fork_at and eval_sets:
                    # Before the checkpoint: a checkpoint at a fork step means its branch
                    # (and its row) is done, so a resume never has to redo or skip one.
                    branch = self._cooldown(
                        self.fork_at[step], model, optimizer, params, stream, eval_sets
                    )
                    writer.write(branch)
                    self._say(
                        f"cooldown {branch['fork_step']} -> {branch['step']}: "
                        + ", ".join(f"{d} {v:.3f}" for d, v in branch["val_loss"].items())
                    )
                # No checkpoint during a streak of skipped updates (it would rotate good ones
                # out), except the final one: a run that ends mid-streak still saves its end
                # state (the weights of its last applied update), so every reader of the
                # finished run loads its last step rather than silently an older one.
                if is_ckpt and (nonfinite_run == 0 or is_last):
                    meta = {
                        "step": step,
                        "tokens": budget.tokens_at(step),
                        "flops": budget.flops_at(step),
                        "config_hash": cfg.config_hash(),
                        "data_fingerprint": data_fp,
                        "model": cfg.model.name,
                        "train_loss": last.get("loss"),
                        "val_loss": val_loss or None,
                    }
                    self.save_checkpoint(step, model, optimizer, meta, nonfinite_total)
                if stopping:
                    self.finish_checkpoint()
                    raise self._stopped(stop.signum, step, saved=nonfinite_run == 0)
            self.finish_checkpoint()
        finally:
            stop.__exit__()
            writer.close()
            bar.close()

        wall = time.perf_counter() - t_start
        trained_tokens = budget.tokens_at(budget.total_steps - start_step)
        counts = count_params(cfg.model)
        summary = {
            "run_dir": str(run_dir),
            "model": cfg.model.name,
            "steps": budget.total_steps,
            "tokens": budget.total_tokens,
            "flops": budget.total_flops,
            "flops_accounting": "paper (Narayanan et al.) train_flops_per_token x tokens",
            "flops_per_token": budget.flops_per_token,
            "flops_spent": self.flops_spent(budget.total_steps),
            "cooldowns": [[c.fork_step, c.length] for c in self.cooldowns],
            "palm_flops_per_token": palm_flops_per_token(cfg.model, t.seq_len),
            "budget": {"kind": budget.kind, "requested": budget.requested},
            "params_total": counts.total,
            "params_active": counts.active,
            "final_train_loss": last.get("loss"),
            "val_loss": val_loss,
            "nonfinite_skipped": nonfinite_total,
            # the final checkpoint's step, and how many updates before it were skipped in a row
            "checkpoint_step": budget.total_steps,
            "final_skipped_in_row": nonfinite_run,
            "resumed_from_step": resumed_from,
            "wall_s": wall,
            "tokens_per_s": trained_tokens / wall if wall > 0 else None,
        }
        if self.is_main:
            atomic_write_json(run_dir / DONE, summary)
        return summary

    def _stopped(self, signum: int, step: int, *, saved: bool) -> TrainingStopped:
        name = signal.Signals(signum).name
        if saved:
            where = f"checkpoint {ckpt_io.step_dir(self.run_dir, step)} saved"
        else:
            good = ckpt_io.newest_valid(self.run_dir)[0]
            where = "no checkpoint at this step (its update was not finite); " + (
                f"the last good one is {good.path}" if good else "there is no checkpoint yet"
            )
        return TrainingStopped(
            f"stopped by {name} at step {step} of {self.budget.total_steps}: {where}; "
            f"`moelab train --out {self.run_dir}` resumes",
            signum,
        )

    def _row(self, step, lr, acc, n_acc, skipped, interval_tokens, interval_time):
        if self.world > 1:
            for key in ("ce", "aux", "z"):  # losses of the whole batch, not of this rank's rows
                acc[key] = self.reduce_mean(acc[key])
        ce, aux, z, gnorm = (
            float(acc[k] / n_acc) if n_acc else math.nan for k in ("ce", "aux", "z", "gnorm")
        )
        row: dict[str, Any] = {
            "step": step,
            "tokens": self.budget.tokens_at(step),
            "flops": self.budget.flops_at(step),
            "lr": lr,
            "loss": ce,
            "aux_loss": aux,
            "z_loss": z,
            "grad_norm": gnorm,
            "skipped_updates": skipped,
            "tokens_per_s": interval_tokens / interval_time if interval_time > 0 else 0.0,
            "flops_spent": self.flops_spent(step),
        }
        if self.telemetry is not None:
            row["moe"] = self.telemetry.flush()
            if self.world > 1:
                row["moe"] = self._whole_batch_moe(row["moe"])
        return row

    def _whole_batch_moe(self, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-layer telemetry of all ranks combined, with the paper's all-to-all time: seconds
        this interval (forward + backward), then averaged over ranks with the other figures."""
        from moelab.parallel.telemetry import reduce_moe_rows

        timers = {m.layer: m.timer.take() for m in self.model.modules() if hasattr(m, "timer")}
        for layer in layers:
            layer["all_to_all_s"] = timers.get(layer["layer"], 0.0)
        # The load balance of the whole batch's loads, not the mean of the ranks' own.
        return [with_load_balance(r) for r in reduce_moe_rows(layers, self.device)]

    def _say(self, message: str) -> None:
        if self.is_main:  # a command shows moelab's log on stderr, above a running bar
            log.info(message)
