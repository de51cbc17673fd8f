"""`torchrun --nproc_per_node=2 -m moelab train` (gloo, CPU) against the one-process run.

The run is dropless with no balancing-loss weight, so the 2-rank run (each rank routing its own
rows) computes exactly the single-process step: the logged losses, gradient norms and
validation losses agree to 1e-4, from the first step (each rank builds and initialises only its
shards, to the one-process weights). Checkpoints cross world sizes both ways: 2 ranks resume a
one-process checkpoint, one process resumes (and evaluates) a 2-rank one, which holds DCP
shards only; 2 ranks resume their own exactly; consolidation writes one file. The 2-rank runs
use activation checkpointing (``parallel.activation_checkpointing``), the one-process run not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from _parallel_spawn import free_port
from _train_data import make_prepared, tiny_config
from moelab.train import Trainer, load_model, load_run_config, read_metrics, train
from moelab.train.checkpoint import check_checkpoint, consolidate_checkpoint
from moelab.train.validation import build_eval_sets, evaluate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(Trainer, "grad_norm") or not hasattr(Trainer, "save_checkpoint"),
        reason="the trainer lacks the grad_norm/save_checkpoint seams the distributed "
        "trainer fills in (docs/distributed.md, 'Trainer hooks')",
    ),
]


def _raw(prepared: Path) -> dict:
    raw = tiny_config(
        prepared,
        moe=True,
        budget_steps=4,
        batch_size=4,
        seq_len=16,
        warmup_steps=1,
        eval_tokens=256,
        eval_points=1,
        checkpoint_every=1,
        keep_last=4,
        dropout=0.0,
        device="cpu",
    )
    raw["model"].update(n_layers=2, d_model=32, d_ffn=64, capacity_factor=None, aux_loss_weight=0.0)
    return raw


def _torchrun(config: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOELAB_DIST_TIMEOUT_S": "60"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "moelab",
        "train",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _cut_back(src: Path, dst: Path, step: int) -> None:
    """A copy of run ``src`` as if it had stopped right after its checkpoint at ``step``."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    (dst / "done.json").unlink()


def _same_rows(a_rows, b_rows, steps) -> None:
    a = {r["step"]: r for r in a_rows}
    b = {r["step"]: r for r in b_rows}
    for s in steps:
        assert abs(a[s]["loss"] - b[s]["loss"]) < 1e-4, (s, a[s], b[s])
        assert abs(a[s]["grad_norm"] - b[s]["grad_norm"]) < 1e-4 * max(1.0, a[s]["grad_norm"])


def test_torchrun_two_ranks_match_one_process_and_resume_across_world_sizes(tmp_path):
    prepared = make_prepared(tmp_path)
    raw = _raw(prepared)
    config = tmp_path / "run.yaml"
    # The 2-rank runs also recompute each block in backward (not in the hash: the same numbers,
    # and a resume across the two settings is allowed).
    config.write_text(yaml.safe_dump({**raw, "parallel": {"activation_checkpointing": True}}))
    one = train(load_run_config(raw), tmp_path / "one", progress=False)
    rows_one = read_metrics(tmp_path / "one")

    # 2 ranks, each building and initialising only its shards, train the one-process run ...
    _torchrun(config, tmp_path / "two")
    rows_two = read_metrics(tmp_path / "two")
    stored = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())
    assert stored["parallel"]["activation_checkpointing"] is True
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3, 4]
    _same_rows(rows_one, rows_two, [1, 2, 3, 4])
    for a, b in zip(rows_one[1:], rows_two[1:]):
        # telemetry describes the whole batch: loads summed over both ranks
        assert [m["tokens_per_expert"] for m in a["moe"]] == [
            m["tokens_per_expert"] for m in b["moe"]
        ]
        assert all(m["all_to_all_s"] > 0 for m in b["moe"])  # the paper's all-to-all time
        # load balance of the whole batch, not the mean of the ranks'
        assert [m["max_vio"] for m in a["moe"]] == pytest.approx([m["max_vio"] for m in b["moe"]])
    for dom, v in one["val_loss"].items():
        assert abs(v - rows_two[-1]["val_loss"][dom]) < 1e-4

    # Their checkpoints are DCP shards only: no full weights, no optimizer state in state.pt;
    # meta.json records every shard's size (checked without reading the shards).
    for ckpt in (tmp_path / "two" / "checkpoints").iterdir():
        assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "sharded", "state.pt"]
        shards = sorted(p.name for p in (ckpt / "sharded").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards
        meta = json.loads((ckpt / "meta.json").read_text())
        assert sorted(meta["sharded"]) == shards and list(meta["files"]) == ["state.pt"]
        assert torch.load(ckpt / "state.pt", weights_only=True)["optimizer"] is None
    assert not list((tmp_path / "two" / "checkpoints").glob(".*"))  # no staging left
    model, _, meta = load_model(tmp_path / "two")  # one process reads the shards
    assert meta["world"] == 2
    from moelab.data import PreparedData

    eval_sets = build_eval_sets(PreparedData.open(prepared), 16, 256, 2)
    got = evaluate(model, eval_sets, torch.device("cpu"), contextlib.nullcontext)
    for dom, v in got.items():
        assert abs(v - one["val_loss"][dom]) < 1e-4

    # ... 2 ranks continue the one-process run after step 1 (its full-file checkpoint) ...
    _cut_back(tmp_path / "one", tmp_path / "one_then_two", step=1)
    _torchrun(config, tmp_path / "one_then_two")
    _same_rows(rows_one, read_metrics(tmp_path / "one_then_two"), [2, 3, 4])

    # ... one process continues the 2-rank run after step 2 (a checkpoint they wrote) ...
    _cut_back(tmp_path / "two", tmp_path / "two_then_one", step=2)
    train(load_run_config(raw), tmp_path / "two_then_one", progress=False)
    _same_rows(rows_one, read_metrics(tmp_path / "two_then_one"), [3, 4])

    # ... and 2 ranks continue it exactly: the rows of the uninterrupted 2-rank run.
    _cut_back(tmp_path / "two", tmp_path / "two_again", step=2)
    _torchrun(config, tmp_path / "two_again")
    again = {r["step"]: r for r in read_metrics(tmp_path / "two_again")}
    for r in rows_two[2:]:
        assert (again[r["step"]]["loss"], again[r["step"]]["grad_norm"]) == (
            r["loss"],
            r["grad_norm"],
        )

    # `moelab consolidate`: one safetensors file, streamed, recorded in meta.json, the same
    # weights as the shards.
    path, record = consolidate_checkpoint(tmp_path / "two")
    assert (
        path.name == "step_00000004"
        and record["bytes"] == (path / "model.safetensors").stat().st_size
    )
    assert check_checkpoint(path) is None
    flat = load_file(str(path / "model.safetensors"))
    for name, t in model.state_dict().items():
        assert torch.equal(flat[name], t), name
    assert consolidate_checkpoint(tmp_path / "two")[1] is None  # already one file
