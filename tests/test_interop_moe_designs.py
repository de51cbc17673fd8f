"""Exports of today's MoE designs (issue 17 item 6): fine-grained experts to Mixtral, gated
shared experts to Qwen2-MoE (a real shared expert), sigmoid routing with the selection bias and
shared experts to GLM-4.5's class (DeepSeek-V3's router, bias kept); exact logits in
transformers, a held-out text's per-token loss equal to `moelab eval --ppl`, weights back bit
for bit through `moelab import`; designs no class expresses refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _interop_runs import fresh_run  # noqa: E402
from moelab.cli import main  # noqa: E402
from moelab.config import ModelConfig  # noqa: E402
from moelab.errors import MoelabError  # noqa: E402
from moelab.interop import class_for_model, export_hf, import_hf  # noqa: E402
from moelab.train import checkpoint as ckpt_io  # noqa: E402
from moelab.train import load_model  # noqa: E402

MODERN = dict(arch="modern", n_layers=2, d_model=32, n_heads=2, d_ffn=64, max_seq_len=32)
# (case, moelab model fields, the transformers class it must become)
CASES = [
    (
        "fine-grained-top4",  # G = 4: eight experts of d_ffn / 4, four active
        {"n_experts": 8, "top_k": 4, "moe_every": 1, "d_expert": 16},
        "MixtralForCausalLM",
    ),
    (
        "shared-gated-every2",
        {
            "n_experts": 4,
            "top_k": 2,
            "moe_every": 2,
            "d_expert": 16,
            "n_shared_experts": 2,
            "shared_expert_gate": True,
        },
        "Qwen2MoeForCausalLM",
    ),
    (
        "sigmoid-bias-shared",  # DeepSeek-V3's layer
        {
            "n_experts": 8,
            "top_k": 2,
            "moe_every": 1,
            "d_expert": 16,
            "n_shared_experts": 1,
            "router_score": "sigmoid",
            "norm_topk": True,
            "route_scale": 2.5,
            "balance": "bias",
        },
        "Glm4MoeForCausalLM",
    ),
]

HELD_OUT = (
    "A small grey heron waits by the cold river while the boats drift past the old mill. "
    "Nobody in the village remembers when the bridge was built, but everyone crosses it. "
) * 3


def _vocab(prepared: Path) -> int:
    from moelab.data import PreparedData

    return int(PreparedData.open(prepared).vocab_size)


def _with_nonzero_bias(run: Path) -> None:
    """Give every selection bias distinct values (a fresh run's are 0), so that dropping it
    anywhere on the way changes the chosen experts."""
    model, cfg, meta = load_model(run)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("score_bias"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.3)
    ckpt_io.save_checkpoint(run, meta["step"], model, {"step": meta["step"]}, meta, keep_last=1)


def _hf_loss(hf, ids: list[int], context: int) -> tuple[float, int]:
    """Mean next-token loss of ``ids`` in windows of ``context`` tokens that do not overlap
    (what `moelab eval --ppl` computes by default), in transformers alone."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            end = min(start + context, len(ids) - 1)
            inputs = torch.tensor([ids[start:end]])
            targets = torch.tensor(ids[start + 1 : end + 1])
            logits = hf(inputs).logits[0].float()
            nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
    return nll / count, count


@pytest.mark.slow
@pytest.mark.parametrize("case,fields,hf_class", CASES, ids=[c[0] for c in CASES])
def test_design_exports_exactly_and_round_trips(
    tmp_path, grammar_data, capsys, case, fields, hf_class
):
    run = fresh_run(tmp_path, case, grammar_data, _vocab(grammar_data), **{**MODERN, **fields})
    if fields.get("balance") == "bias":
        _with_nonzero_bias(run)
    out = tmp_path / "hf"
    res = export_hf(run, out)
    assert res.hf_class == hf_class and res.max_abs_logit_diff < 1e-4

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == hf_class
    ours, _, _ = load_model(run)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for B, T in [(1, 1), (3, 17), (2, 32)]:
            tokens = torch.randint(0, ours.cfg.vocab_size, (B, T), generator=gen)
            diff = (ours(tokens).logits_BTV - hf(tokens).logits).abs().max().item()
            assert diff < 1e-4, (B, T, diff)
    cfg = ours.cfg
    if cfg.n_shared_experts and hf_class == "Qwen2MoeForCausalLM":  # a real shared expert
        assert hf.config.shared_expert_intermediate_size == 2 * 16
    if cfg.balance == "bias":  # the selection bias is in the export, not dropped
        theirs = hf.model.layers[0].mlp.gate.e_score_correction_bias
        assert torch.equal(theirs, ours.layers[0].ffn.score_bias) and theirs.abs().sum() > 0

    # A held-out text: transformers' per-token loss on the export = `moelab eval --ppl`.
    text = tmp_path / "held_out.txt"
    text.write_text(HELD_OUT, encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(run), "--ppl", str(text), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]["domains"][0]
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    loss, count = _hf_loss(hf, tok.encode(HELD_OUT), cfg.max_seq_len)
    assert count == row["tokens"] > cfg.max_seq_len  # several windows
    assert abs(loss - row["loss"]) < 1e-5, (loss, row["loss"])

    # Back through `moelab import`: the same weights, bit for bit, and the same design.
    back = tmp_path / "back"
    assert import_hf(out, back).max_abs_logit_diff < 1e-4
    again, run_cfg, _ = load_model(back)
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    got = run_cfg.model
    for key in ("n_experts", "top_k", "expert_width", "n_shared_experts", "shared_expert_gate",
                "router_score", "normalizes_topk", "route_scale", "balance"):  # fmt: skip
        assert getattr(got, key) == getattr(cfg, key), key
    assert got.moe_layer_ids() == cfg.moe_layer_ids()


def test_top1_mixtral_imports_as_norm_topk(tmp_path, grammar_data):
    fields = {"n_experts": 4, "top_k": 1, "moe_every": 1, "norm_topk": True}
    run = fresh_run(tmp_path, "top1", grammar_data, _vocab(grammar_data), **{**MODERN, **fields})
    res = export_hf(run, tmp_path / "hf")
    assert res.hf_class == "MixtralForCausalLM" and res.max_abs_logit_diff < 1e-4
    assert import_hf(tmp_path / "hf", tmp_path / "back").max_abs_logit_diff < 1e-4
    got = load_model(tmp_path / "back")[1].model
    assert got.top_k == 1 and got.norm_topk is True


def test_designs_no_class_expresses_are_refused_in_one_line(tmp_path, grammar_data, capsys):
    def why(**fields) -> str:
        with pytest.raises(MoelabError) as e:
            class_for_model(ModelConfig(**MODERN, n_experts=4, **fields))
        assert "\n" not in str(e.value)
        return str(e.value)

    ungated = why(moe_every=2, n_shared_experts=1)
    assert "Qwen2MoeForCausalLM gates its shared expert" in ungated
    sigmoid = why(moe_every=2, router_score="sigmoid", balance="bias")
    assert "Glm4MoeForCausalLM has an MoE in every layer" in sigmoid
    assert "DeepseekV3ForCausalLM" in sigmoid and "latent attention" in sigmoid
    scaled = why(moe_every=1, route_scale=2.0)
    assert "has no route scale" in scaled
    # Through the command: exit 2, one line, nothing written.
    run = fresh_run(
        tmp_path, "ungated", grammar_data, _vocab(grammar_data), **MODERN, n_experts=4,
        moe_every=2, n_shared_experts=1,
    )  # fmt: skip
    out = tmp_path / "hf"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ungated" in err[0] and not out.exists()
