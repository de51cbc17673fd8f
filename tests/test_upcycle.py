"""`moelab upcycle`: a trained dense run becomes an MoE run whose step-0 logits are the dense
run's, which `moelab train` then trains; bad input is one line and writes nothing."""

from __future__ import annotations

import pytest
import torch

from _robust import expect_user_error, run_cli
from moelab.config import ModelConfig
from moelab.model import build_model
from moelab.train import load_model
from moelab.upcycle import upcycled_state


def _logits_diff(a, b, vocab: int, max_len: int) -> float:
    gen = torch.Generator().manual_seed(3)
    worst = 0.0
    with torch.no_grad():
        for B, T in [(1, 1), (3, 9), (2, max_len)]:
            tokens = torch.randint(0, vocab, (B, T), generator=gen)
            d = (a(tokens).logits_BTV - b(tokens).logits_BTV).abs().max().item()
            worst = max(worst, d)
    return worst


def test_upcycled_run_gives_the_dense_logits_then_trains(dense_run, tmp_path, capsys):
    new = tmp_path / "up"
    rc, out, err = run_cli(capsys, ["upcycle", dense_run, "--experts", "4", "--out", new])
    assert rc == 0, err
    assert "logits match" in out and "moelab train --out" in out

    dense, dense_cfg, dense_meta = load_model(dense_run)
    moe, cfg, meta = load_model(new)
    assert meta["step"] == 0 and cfg.model.n_experts == 4 and cfg.model.top_k == 2
    assert cfg.model.moe_layer_ids() == [1]  # the dense run's moe_every (2): 1-based layer 2
    # Every expert is the dense FFN; the router is a fresh random draw (not zeros).
    ffn, experts = dense.layers[1].ffn, moe.layers[1].ffn.experts
    for e in range(4):
        assert torch.equal(experts.w1[e], ffn.fc1.weight.t())
        assert torch.equal(experts.b1[e], ffn.fc1.bias)
        assert torch.equal(experts.w2[e], ffn.fc2.weight.t())
        assert torch.equal(experts.b2[e], ffn.fc2.bias)
    assert moe.layers[1].ffn.gate.weight.abs().min() > 0
    for name, t in dense.state_dict().items():
        if not name.startswith("layers.1.ffn."):
            assert torch.equal(t, moe.state_dict()[name]), name
    # Step 0: the dense model's function (identical experts, top-2 weights summing to 1).
    diff = _logits_diff(dense, moe, cfg.model.vocab_size, cfg.model.max_seq_len)
    assert diff < 1e-5, diff

    # What the study reads: the dense run, its config hash, step, tokens and FLOPs.
    up = cfg.upcycled_from
    assert up.run == str(dense_run.resolve()) and up.step == dense_meta["step"] == 4
    assert up.config_hash == dense_cfg.config_hash() == dense_meta["config_hash"]
    assert up.train_flops == dense_meta["flops"] > 0 and up.tokens == dense_meta["tokens"]
    assert cfg.train.seed == dense_cfg.train.seed + 1  # not a replay of the dense batches

    # `moelab train` continues it from step 0 to its budget (the dense run's: 4 steps).
    rc, out, err = run_cli(capsys, ["train", "--out", new, "--no-progress"])
    assert rc == 0, err
    assert "resuming from checkpoint step_00000000" in err
    trained, cfg2, meta2 = load_model(new)
    assert meta2["step"] == 4 and cfg2.upcycled_from == up
    assert meta2["config_hash"] == meta["config_hash"]
    w = trained.layers[1].ffn.experts.w1
    assert not torch.equal(w[0], experts.w1[0])  # the experts trained ...
    assert not torch.equal(trained.layers[1].ffn.gate.weight, moe.layers[1].ffn.gate.weight)


def test_normalised_top1_upcycles_too(dense_run, tmp_path):
    """Top-1 with the chosen weight renormalised to 1 (model.norm_topk) is the dense model
    too (not bit for bit: each expert multiplies only its own rows, blocked otherwise)."""
    from moelab.upcycle import upcycle

    new = tmp_path / "top1"
    res = upcycle(dense_run, new, experts=4, top_k=1, overrides=["model.norm_topk=true"])
    assert res.max_abs_logit_diff < 1e-5
    dense, _, _ = load_model(dense_run)
    moe, _, _ = load_model(new)
    assert _logits_diff(dense, moe, dense.cfg.vocab_size, dense.cfg.max_seq_len) < 1e-5


@pytest.mark.parametrize(
    "routing",
    [
        {"n_experts": 6, "top_k": 3},
        # DeepSeek-V3's router: any selection bias picks among identical experts
        {"n_experts": 4, "top_k": 2, "router_score": "sigmoid", "balance": "bias"},
    ],
    ids=["softmax-top3", "sigmoid-bias"],
)
def test_modern_arch_every_layer_step0_parity(grammar_data, routing):
    """The SwiGLU copy (w1, w3, w2) with an MoE in every layer, in process."""
    from moelab.data import PreparedData

    vocab = int(PreparedData.open(grammar_data).vocab_size)
    fields = dict(arch="modern", n_layers=2, d_model=32, n_heads=2, d_ffn=64, max_seq_len=32)
    dense = build_model(ModelConfig(vocab_size=vocab, **fields), seed=1).eval()
    moe = build_model(ModelConfig(vocab_size=vocab, **fields, moe_every=1, **routing), seed=2)
    moe.load_state_dict(upcycled_state(dense.state_dict(), moe))
    with torch.no_grad():
        for name, buf in moe.named_buffers():
            if name.endswith("score_bias"):
                buf.copy_(torch.randn(buf.shape) * 0.5)
    assert _logits_diff(dense, moe.eval(), vocab, 32) < 1e-5


@pytest.mark.parametrize(
    "case,args,words",
    [
        ("missing", ["--experts", "4"], ["not a moelab run"]),
        ("one-expert", ["--experts", "1"], ["--experts", ">= 2"]),
        ("top-k-too-big", ["--experts", "4", "--top-k", "5"], ["--top-k", "between 1 and"]),
        ("top-1", ["--experts", "4", "--top-k", "1"], ["--top-k 1", "router probability"]),
        ("top-k-in-set", ["--experts", "4", "--set", "model.top_k=3"], ["--top-k instead"]),
        ("experts-in-set", ["--experts", "4", "--set", "model.n_experts=8"], ["--experts inst"]),
        (
            "shape-key",
            ["--experts", "4", "--set", "model.d_ffn=128"],
            ["model.d_ffn", "keeps the dense"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_one_line_and_writes_nothing(dense_run, tmp_path, capsys, case, args, words):
    src = tmp_path / "nowhere" if case == "missing" else dense_run
    out = tmp_path / "new"
    expect_user_error(
        capsys, ["upcycle", src, *args, "--out", out], watch=[out, dense_run], match=words
    )


def test_moe_run_and_existing_out_are_refused(finished_run, dense_run, tmp_path, capsys):
    out = tmp_path / "new"
    expect_user_error(
        capsys,
        ["upcycle", finished_run, "--experts", "4", "--out", out],
        watch=[out],
        match=["already an MoE"],
    )
    out.mkdir()
    expect_user_error(
        capsys,
        ["upcycle", dense_run, "--experts", "4", "--out", out],
        watch=[out],
        match=["exists"],
    )
    assert not list(tmp_path.glob(".new*"))  # no temporary folder or lock left behind
