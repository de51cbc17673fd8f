"""Hugging Face export/import: exact logits in transformers, identical weights after a round
trip, and refusals that write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _interop_runs import fresh_run  # noqa: E402
from moelab.cli import main  # noqa: E402
from moelab.errors import MoelabError  # noqa: E402
from moelab.interop import export_hf, import_hf  # noqa: E402
from moelab.train import load_model  # noqa: E402

# (case, moelab model fields, the transformers class it must become)
CASES = [
    ("paper-dense", {}, "XGLMForCausalLM"),
    ("modern-dense", {"arch": "modern", "norm_eps": 1e-6}, "LlamaForCausalLM"),
    (
        "modern-moe-top2",
        {"arch": "modern", "n_experts": 4, "moe_every": 1, "top_k": 2},
        "MixtralForCausalLM",
    ),
    (
        "modern-moe-top1-every2",
        {"arch": "modern", "n_experts": 4, "moe_every": 2, "top_k": 1},
        "Qwen2MoeForCausalLM",
    ),
]


def _vocab(prepared: Path) -> int:
    from moelab.data import PreparedData

    return int(PreparedData.open(prepared).vocab_size)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("case,fields,hf_class", CASES, ids=[c[0] for c in CASES])
def test_export_equals_transformers_and_round_trips(tmp_path, grammar_data, case, fields, hf_class):
    run = fresh_run(tmp_path, case, grammar_data, _vocab(grammar_data), **fields)
    out = tmp_path / "hf"
    res = export_hf(run, out)
    assert res.hf_class == hf_class
    assert res.max_abs_logit_diff is not None and res.max_abs_logit_diff < 1e-4

    # Load it the way a user would, offline, and compare on random batches of several shapes.
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == hf_class
    ours, _, _ = load_model(run)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for B, T in [(1, 1), (3, 17), (2, 64)]:
            tokens = torch.randint(0, ours.cfg.vocab_size, (B, T), generator=gen)
            diff = (ours(tokens).logits_BTV - hf(tokens).logits).abs().max().item()
            assert diff < 1e-4, (B, T, diff)

    # The tokenizer loads offline in transformers and encodes like moelab's.
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    from moelab.data.tokenizer import load_tokenizer

    ml = load_tokenizer(run / "tokenizer.json")
    text = "The cat sleeps quietly near the river.<|endoftext|> Ünïcode\n  ok"
    assert tok.encode(text) == ml.encode(text, add_special_tokens=False).ids
    assert tok.eos_token_id == ml.token_to_id("<|endoftext|>") == hf.config.eos_token_id
    assert tok.pad_token_id == ml.token_to_id("<|pad|>")

    # Round trip: import the export; the weights come back bit for bit.
    back = tmp_path / "back"
    assert import_hf(out, back).max_abs_logit_diff < 1e-4
    again, run_cfg, meta = load_model(back)
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("arch", "n_layers", "d_model", "n_heads", "d_ffn", "n_experts", "top_k"):
        assert getattr(run_cfg.model, key) == getattr(ours.cfg, key)
    if ours.cfg.is_moe:
        assert run_cfg.model.moe_layer_ids() == ours.cfg.moe_layer_ids()
    assert meta["hf_class"] == hf_class


def test_imported_run_works_with_eval_and_generate(tmp_path, grammar_data):
    from moelab.eval.priming import evaluate_task
    from moelab.eval.runs import open_run
    from moelab.eval.tasks.generic import load_generic
    from moelab.generate import generate_text

    run = fresh_run(tmp_path, "llama", grammar_data, _vocab(grammar_data), arch="modern")
    assert main(["export", str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    opened = open_run(tmp_path / "back")
    task_file = tmp_path / "t.jsonl"
    task_file.write_text(
        '{"context": "The cat", "choices": ["sleeps", "barks"], "label": 0}\n'
        '{"context": "The dog", "choices": ["sleeps", "barks"], "label": 1}\n'
    )
    res = evaluate_task(opened.model, opened.tokenizer, load_generic(task_file), bootstrap=10)
    assert res["n_items"] == 2
    text = generate_text(tmp_path / "back", "The cat", max_new_tokens=4, temperature=0.0)
    assert isinstance(text, str)


def _expect_refusal(capsys, argv: list[str], out: Path, words: str) -> None:
    capsys.readouterr()  # drop what the test's own setup printed
    before = sorted(p.name for p in out.parent.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == before  # nothing written, no temp


def test_paper_moe_is_refused_and_nothing_written(tmp_path, grammar_data, capsys):
    run = fresh_run(
        tmp_path, "paper-moe", grammar_data, _vocab(grammar_data), n_experts=4, moe_every=2
    )
    out = tmp_path / "hf"
    _expect_refusal(capsys, ["export", str(run), "--out", str(out)], out, "paper's MoE")
    assert not out.exists()


def test_capacity_limited_moe_is_refused(tmp_path, grammar_data, capsys):
    run = fresh_run(
        tmp_path,
        "capped",
        grammar_data,
        _vocab(grammar_data),
        arch="modern",
        n_experts=4,
        moe_every=1,
        eval_capacity_factor=1.0,
    )
    out = tmp_path / "hf"
    _expect_refusal(capsys, ["export", str(run), "--out", str(out)], out, "dropless")


def test_non_empty_output_folder_is_refused(tmp_path, grammar_data):
    run = fresh_run(tmp_path, "dense", grammar_data, _vocab(grammar_data))
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MoelabError, match="not empty"):
        export_hf(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_hf(run, empty).hf_class == "XGLMForCausalLM"  # an empty folder is fine


def test_import_refuses_what_moelab_cannot_compute(tmp_path, grammar_data, capsys):
    cfg = transformers.LlamaConfig(
        vocab_size=_vocab(grammar_data),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: moelab has none
        tie_word_embeddings=True,
    )
    src = tmp_path / "gqa"
    transformers.LlamaForCausalLM(cfg).save_pretrained(src)
    (src / "tokenizer.json").write_bytes((grammar_data / "tokenizer.json").read_bytes())
    out = tmp_path / "run"
    _expect_refusal(capsys, ["import", str(src), "--out", str(out)], out, "grouped-query")
    assert not out.exists()


def test_class_choice_follows_the_exactness_rules():
    from moelab.config import ModelConfig
    from moelab.interop import class_for_model

    def pick(**kw) -> str:
        return class_for_model(ModelConfig(n_layers=4, d_model=32, n_heads=2, **kw)).name

    assert pick() == "XGLMForCausalLM"
    assert pick(arch="modern") == "LlamaForCausalLM"
    moe = dict(arch="modern", n_experts=4)
    assert pick(**moe, moe_every=1, top_k=2) == "MixtralForCausalLM"
    assert pick(**moe, moe_every=1, top_k=4) == "MixtralForCausalLM"
    assert pick(**moe, moe_every=1, top_k=1) == "Qwen2MoeForCausalLM"  # Switch gate weight
    assert pick(**moe, moe_every=2, top_k=2) == "Qwen2MoeForCausalLM"  # MoE every other layer
    for kw, words in [
        (dict(padding_idx=0), "padding_idx=0"),
        (dict(norm_eps=1e-6), "norm_eps=1e-06"),
        (dict(n_experts=4, moe_every=2), "paper's MoE"),
        (dict(**moe, eval_capacity_factor=2.0), "eval_capacity_factor=2.0"),
    ]:
        with pytest.raises(MoelabError, match=words):
            pick(**kw)
