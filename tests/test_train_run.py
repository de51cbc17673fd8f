"""Training runs end to end on tiny models and tiny prepared data (the real pipeline)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from _train_data import make_prepared, tiny_config, unigram_entropy
from moelab.cli import main
from moelab.errors import MoelabError
from moelab.flops import train_flops_per_token
from moelab.generate import generate_text
from moelab.train import load_model, load_run_config, read_metrics, train
from moelab.train.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("train_run"))


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run fastest on one thread, and 2 shared cores oversubscribe badly.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dense_run(prepared, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dense") / "run"
    torch.set_num_threads(1)
    train(load_run_config(tiny_config(prepared, budget_steps=100)), run_dir, progress=False)
    return run_dir


def test_dense_learns_far_below_unigram_entropy(prepared, dense_run):
    h = unigram_entropy(prepared)
    done = json.loads((dense_run / "done.json").read_text())
    assert done["final_train_loss"] < 0.5 * h, (done["final_train_loss"], h)
    assert set(done["val_loss"]) == {"alpha", "beta", "gamma"}  # every domain, held-out too
    assert all(v < 0.5 * h for v in done["val_loss"].values())


def test_moe_learns_and_logs_telemetry(prepared, tmp_path):
    cfg = load_run_config(tiny_config(prepared, moe=True, budget_steps=100, log_every=10))
    summary = train(cfg, tmp_path / "moe", progress=False)
    assert summary["final_train_loss"] < 0.5 * unigram_entropy(prepared)
    rows = read_metrics(tmp_path / "moe")
    moe = rows[-1]["moe"]
    assert [layer["layer"] for layer in moe] == cfg.model.moe_layer_ids()
    layer = moe[0]
    for key in (
        "overflow_pct_1",
        "overflow_pct_2",
        "gate_entropy",
        "top20_share",
        "bottom20_share",
        "unused_experts",
        "max_over_mean_load",
        "max_vio",
    ):
        assert isinstance(layer[key], float), key
    # Every token makes two assignments per MoE layer: the interval's counts add up.
    tokens = 10 * cfg.train.batch_size * cfg.train.seq_len
    assert sum(layer["tokens_per_expert"]) == 2 * tokens
    # MaxVio and dead experts of the interval's loads (by hand).
    load = layer["tokens_per_expert"]
    assert layer["max_vio"] == pytest.approx(max(load) / (sum(load) / len(load)) - 1, rel=1e-12)
    assert layer["dead_experts"] == sum(n == 0 for n in load)
    assert 0 < layer["gate_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert rows[-1]["aux_loss"] > 0


def test_logged_flops_are_flops_per_token_times_tokens(prepared, dense_run):
    cfg = load_run_config(dense_run / "config.yaml", check_data=False)
    fpt = train_flops_per_token(cfg.model, cfg.train.seq_len)
    rows = read_metrics(dense_run)
    assert [r["step"] for r in rows] == list(range(1, 101))
    for r in rows:
        assert r["tokens"] == r["step"] * cfg.train.batch_size * cfg.train.seq_len
        assert r["flops"] == fpt * r["tokens"]
    evals = [r["step"] for r in rows if "val_loss" in r]
    assert evals == [1, 10, 100]  # log-spaced, plus the final step
    meta = json.loads((dense_run / "checkpoints/step_00000100/meta.json").read_text())
    assert meta["flops"] == fpt * meta["tokens"]


def test_run_dir_layout_and_load_model(dense_run):
    assert {p.name for p in dense_run.iterdir()} >= {
        "config.yaml",
        "tokenizer.json",
        "metrics.jsonl",
        "checkpoints",
        "done.json",
    }
    assert [c.step for c in list_checkpoints(dense_run)] == [80, 100]  # keep_last 2
    model, cfg, meta = load_model(dense_run)
    assert meta["step"] == 100 and not model.training
    model20, _, _ = load_model(dense_run, step=80)
    assert not torch.equal(model.embed.weight, model20.embed.weight)


def test_generate_is_deterministic_and_learned_the_grammar(dense_run):
    a = generate_text(dense_run, "The cat", max_new_tokens=12, seed=3)
    b = generate_text(dense_run, "The cat", max_new_tokens=12, seed=3)
    assert a == b and a.strip()
    greedy = generate_text(dense_run, "The cat", max_new_tokens=12, temperature=0)
    assert greedy.startswith(" sleeps quietly near the"), greedy


def test_cli_generate(dense_run, capsys):
    args = ["--prompt", "The cat", "--max-tokens", "10", "--top-k", "5", "--top-p", "0.9"]
    assert main(["generate", str(dense_run), *args, "--seed", "7"]) == 0
    text = generate_text(dense_run, "The cat", max_new_tokens=10, top_k=5, top_p=0.9, seed=7)
    assert capsys.readouterr().out == "The cat" + text + "\n"


def test_other_run_in_out_dir_is_refused(prepared, dense_run):
    other = load_run_config(tiny_config(prepared, budget_steps=100, lr=5e-3))
    with pytest.raises(MoelabError, match=r"different config \(train.lr: 0.01 -> 0.005\)"):
        train(other, dense_run, progress=False)
    same = load_run_config(tiny_config(prepared, budget_steps=100))
    assert train(same, dense_run, progress=False)["steps"] == 100  # complete: nothing to do


def test_non_empty_folder_is_refused(prepared, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MoelabError, match="holds no moelab run"):
        train(load_run_config(tiny_config(prepared)), tmp_path, progress=False)


def test_cli_preset_and_budget_flags_bf16_and_tensorboard_note(prepared, tmp_path, capsys):
    out = tmp_path / "quick"
    sets = [
        "train.seq_len=32",
        "train.batch_size=4",
        "train.eval_tokens=256",
        "train.dtype=bf16",
        "train.tensorboard=true",
    ]
    argv = [
        "train",
        "--preset",
        "moe-cpu-0.5m",
        "--data",
        str(prepared),
        "--steps",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "done: 2 steps" in captured.out
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["name"] == "moe-cpu-0.5m" and resolved["train"]["dtype"] == "bf16"
    rows = read_metrics(out)
    assert all(math.isfinite(r["loss"]) for r in rows)
    if importlib.util.find_spec("tensorboard") is None:
        assert "tensorboard package is not installed" in captured.err
    else:
        assert (out / "tensorboard").is_dir()


def test_grad_accum_matches_one_big_batch(prepared, tmp_path):
    losses = {}
    for accum in (1, 4):
        cfg = load_run_config(
            tiny_config(prepared, budget_steps=3, grad_accum=accum, eval_tokens=0)
        )
        train(cfg, tmp_path / f"a{accum}", progress=False)
        losses[accum] = [r["loss"] for r in read_metrics(tmp_path / f"a{accum}")]
    assert losses[1][0] == pytest.approx(losses[4][0], rel=1e-6)  # same weights, same batch
    assert losses[1] == pytest.approx(losses[4], rel=1e-4)  # equal up to summation order


def test_nan_guard_stops_with_exit_2_and_keeps_last_good_checkpoint(prepared, tmp_path, capsys):
    # lr 1e30 makes step 1's update blow the weights up: every later loss is NaN.
    cfg = tiny_config(
        prepared, lr=1e30, warmup_steps=0, checkpoint_every=1, max_nonfinite_in_row=3, dtype="fp32"
    )
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "update skipped (1 in a row)" in err
    assert "3 non-finite losses or gradients in a row" in err and "step_00000001" in err
    assert [c.step for c in list_checkpoints(tmp_path / "run")] == [1]
    rows = read_metrics(tmp_path / "run")
    assert [r["skipped_updates"] for r in rows] == [0, 1, 1, 1]
    assert not (tmp_path / "run" / "done.json").exists()


def test_resume_refuses_changed_data(tmp_path):
    from _train_data import write_corpus
    from moelab.data import prepare

    def prep(seed: int) -> Path:
        write_corpus(tmp_path / f"src{seed}", 40, seed=seed)
        out = tmp_path / "prepared"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        prepare(out, sources=[f"alpha={tmp_path / f'src{seed}'}/*.txt"], vocab_size=300)
        return out

    prepared = prep(1)
    cfg = load_run_config(tiny_config(prepared, budget_steps=2, eval_tokens=0))
    train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / "done.json").unlink()  # as if killed after its last checkpoint
    prep(2)
    with pytest.raises(MoelabError, match="prepared data .* changed since this run started"):
        train(
            load_run_config(tiny_config(prepared, budget_steps=2, eval_tokens=0)),
            tmp_path / "run",
            progress=False,
        )


def test_a_start_without_checkpoint_can_be_replaced(prepared, tmp_path, capsys):
    # A run killed before its first checkpoint leaves config.yaml only: a new config may start.
    first = load_run_config(tiny_config(prepared, budget_steps=2, eval_tokens=0))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(first.to_yaml())
    second = load_run_config(tiny_config(prepared, budget_steps=2, eval_tokens=0, lr=5e-3))
    assert train(second, tmp_path / "run", progress=False)["steps"] == 2
    assert "held a run with no checkpoint yet" in capsys.readouterr().err
    assert load_run_config(tmp_path / "run" / "config.yaml").train.lr == 5e-3


@pytest.mark.parametrize("rank", ["0", "1"])
def test_done_line_is_printed_by_rank_0_only(prepared, tmp_path, capsys, monkeypatch, rank):
    """Under torchrun every rank runs the command; only rank 0 prints the summary line.
    (WORLD_SIZE stays unset, so this process trains alone; only RANK is looked at.)"""
    monkeypatch.setenv("RANK", rank)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(prepared, budget_steps=2, eval_tokens=0)))
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    done_lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("done: ")]
    assert len(done_lines) == (1 if rank == "0" else 0)
