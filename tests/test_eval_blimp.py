"""BLiMP: the loader on small files in the official schema (tests/fixtures/blimp, sentences
written for these tests), selections and their errors, the hub converter, scoring end to end on
a trained model checked against a direct forward pass, and the real files when present."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moelab.cli import main
from moelab.data.tokenizer import eot_token_id
from moelab.errors import MoelabError
from moelab.eval.priming import evaluate_task
from moelab.eval.tasks import default_tasks_dir, get_task
from moelab.eval.tasks.blimp import FIELDS, PARADIGMS, REFERENCE_FILE, pair_from_record

FIXTURES = Path(__file__).parent / "fixtures"  # holds blimp/ as a tasks directory does
FIXTURE_PAIRS = {"noun_agreement": 4, "toy_binding": 3, "word_order": 5}


def _pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_loader_reads_every_paradigm_with_groups_and_reference():
    task = get_task("blimp", FIXTURES)
    assert task.name == "blimp" and task.kind == "choice" and task.primary_mode == "sum"
    assert task.neutral_prompt is None and task.finetune is None and task.limit_per == "paradigm"
    assert len(task.items) == sum(FIXTURE_PAIRS.values())
    # files sorted by name, pairs in file order; good sentence first (label 0), no context
    first = _pairs(FIXTURES / "blimp" / "noun_agreement.jsonl")[0]
    item = task.items[0]
    assert item.candidates() == [("", first["sentence_good"]), ("", first["sentence_bad"])]
    assert item.label == 0
    # "syntax/semantics" (one official file's spelling) becomes the field syntax_semantics
    assert task.groups[0] == ("field:morphology", "paradigm:noun_agreement")
    assert task.groups[-1] == ("field:syntax", "paradigm:word_order")
    assert ("field:syntax_semantics", "paradigm:toy_binding") in task.groups
    # reference: per paradigm, mean over each field's paradigms, overall = mean over paradigms
    gpt2 = task.reference["GPT-2"]
    assert gpt2["paradigm:word_order"] == 0.9 and gpt2["field:syntax_semantics"] == 0.8
    assert gpt2["overall"] == pytest.approx((0.9 + 1.0 + 0.8) / 3)
    assert set(task.reference) == {"5-gram", "LSTM", "Transformer-XL", "GPT-2"}


@pytest.mark.parametrize(
    "name, paradigms",
    [
        ("blimp:word_order", {"word_order"}),
        ("blimp:paradigm=toy_binding", {"toy_binding"}),
        ("blimp:syntax", {"word_order"}),
        ("blimp:field=syntax_semantics", {"toy_binding"}),
        ("blimp:morphology,word_order", {"noun_agreement", "word_order"}),
    ],
)
def test_selections(name, paradigms):
    task = get_task(name, FIXTURES)
    assert task.name == name
    assert {g[1].removeprefix("paradigm:") for g in task.groups} == paradigms
    assert len(task.items) == sum(FIXTURE_PAIRS[p] for p in paradigms)
    # the reference's overall is the mean over the selected paradigms only
    assert task.reference["5-gram"]["overall"] == pytest.approx(
        np.mean(
            [{"word_order": 0.5, "noun_agreement": 0.7, "toy_binding": 0.3}[p] for p in paradigms]
        )
    )


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("blimp:nonexistent", "no BLiMP paradigm or field 'nonexistent'"),
        ("blimp:word_ordr", "did you mean word_order"),
        ("blimp:field=grammar", "unknown BLiMP field 'grammar'; fields: syntax, morphology"),
        ("blimp:paradigm=syntax", "no BLiMP paradigm or field 'syntax'"),
        ("blimp:uid=word_order", "cannot read 'uid=word_order'"),
        ("piqa:word_order", "task 'piqa' takes no ':' selection"),
    ],
)
def test_bad_selections_are_one_line(name, fragment):
    with pytest.raises(MoelabError) as err:
        get_task(name, FIXTURES)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def _copy_fixtures(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "blimp", tmp_path / "blimp")
    return tmp_path / "blimp"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda r: r.pop("sentence_bad"), 'line 2: field "sentence_bad": missing'),
        (lambda r: r.update(field="pragmatics"), 'line 2: field "field": expected one of syntax'),
        (lambda r: r.update(UID="other"), "line 2: field \"UID\": 'other' in a file named"),
        (lambda r: r.update(sentence_good=" "), 'field "sentence_good": must not be empty'),
        (lambda r: r.update(sentence_good=3), 'field "sentence_good": expected a string'),
    ],
)
def test_file_in_a_wrong_schema_names_file_line_and_field(tmp_path, change, fragment):
    folder = _copy_fixtures(tmp_path)
    path = folder / "word_order.jsonl"
    rows = _pairs(path)
    change(rows[1])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(MoelabError) as err:
        get_task("blimp", tmp_path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_other_bad_folders(tmp_path):
    folder = _copy_fixtures(tmp_path)
    (folder / "stray.jsonl").write_text('{"context": "a", "choices": ["x", "y"], "label": 0}\n')
    with pytest.raises(MoelabError, match=r'stray.jsonl line 1: field "sentence_good": missing'):
        get_task("blimp", tmp_path)
    (folder / "stray.jsonl").unlink()
    (folder / REFERENCE_FILE).write_text('{"UID": "word_order", "ngram": "high"}\n')
    with pytest.raises(MoelabError, match=r'line 1: field "ngram": expected a number'):
        get_task("blimp", tmp_path)
    (folder / REFERENCE_FILE).unlink()
    assert get_task("blimp", tmp_path).reference == {}  # no reference file: no reference
    for f in folder.glob("*.jsonl"):
        f.unlink()
    with pytest.raises(MoelabError, match="no paradigm files"):
        get_task("blimp", tmp_path)


def test_hub_record_converter_and_selection_table():
    record = {
        "sentence_good": "Who should Derek hug?",
        "sentence_bad": "Who should Derek hug Richard?",
        "field": "syntax",
        "linguistics_term": "island_effects",
        "UID": "adjunct_island",
        "simple_LM_method": True,
        "one_prefix_method": False,
        "two_prefix_method": False,
        "lexically_identical": True,
        "pair_id": 0,
    }
    item, field, uid = pair_from_record(record, "hf:nyu-mll/blimp adjunct_island row 0")
    assert item.candidates() == [
        ("", "Who should Derek hug?"),
        ("", "Who should Derek hug Richard?"),
    ]
    assert (field, uid) == ("syntax", "adjunct_island")
    del record["sentence_bad"]
    with pytest.raises(MoelabError, match=r'adjunct_island row 0: field "sentence_bad": missing'):
        pair_from_record(record, "hf:nyu-mll/blimp adjunct_island row 0")
    # the paradigm table the hub loader selects configs with: 67 paradigms in the 4 fields
    assert len(PARADIGMS) == 67 and set(PARADIGMS.values()) == set(FIELDS)


def test_hub_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(MoelabError) as err:
        get_task("hf:blimp:adjunct_island")
    assert "hf:blimp:adjunct_island" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MoelabError, match="no BLiMP paradigm or field 'nope'"):
        get_task("hf:blimp:nope")  # refused before any download


def _direct_sum_logprob(model, tok, sentence: str) -> float:
    """log p(sentence | end-of-text) from one forward pass over the full logits."""
    ids = [eot_token_id(tok, default=0)] + tok.encode(sentence).ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits_BTV.double(), -1)[0]
    return float(sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1)))


@pytest.mark.slow
def test_scored_end_to_end_equals_a_direct_forward_pass(eval_run):
    from moelab.eval.runs import open_run

    run = open_run(eval_run, device="cpu")
    task = get_task("blimp", FIXTURES)
    result = evaluate_task(run.model, run.tokenizer, task, keep_scores=True, bootstrap=200)
    assert result["primary_mode"] == "sum" and "calibrated" not in result["metrics"]
    assert result["n_items"] == len(task.items) and result["chance"] == 0.5
    good = np.array(
        [_direct_sum_logprob(run.model, run.tokenizer, it.targets[0]) for it in task.items]
    )
    bad = np.array(
        [_direct_sum_logprob(run.model, run.tokenizer, it.targets[1]) for it in task.items]
    )
    reported = np.array([result["scores"][0][i]["sum"] for i in range(len(task.items))])
    np.testing.assert_allclose(reported[:, 0], good, atol=1e-4)
    np.testing.assert_allclose(reported[:, 1], bad, atol=1e-4)
    hit = (good > bad).astype(float)
    prob = 1.0 / (1.0 + np.exp(bad - good))  # p(good) / (p(good) + p(bad))
    assert 0.0 < hit.mean() < 1.0  # the pairs are not all decided the same way by this model
    assert result["accuracy"] == pytest.approx(hit.mean())
    assert result["score"] == pytest.approx(prob.mean(), abs=1e-6)
    assert result["score_chance"] == 0.5
    lo, hi = result["score_ci95"]
    assert lo <= result["score"] <= hi
    fields = {g[0] for g in task.groups}
    assert set(result["groups"]) == fields | {g[1] for g in task.groups}
    for label, group in result["groups"].items():
        cols = [i for i, g in enumerate(task.groups) if label in g]
        assert group["n_items"] == len(cols)
        assert group["accuracy"] == pytest.approx(hit[cols].mean())
        assert group["score"] == pytest.approx(prob[cols].mean(), abs=1e-6)
        assert group["accuracy_ci95"][0] <= group["accuracy"] <= group["accuracy_ci95"][1]
    assert result["reference"] == task.reference
    # limit = pairs per paradigm, the first ones of each file
    two = evaluate_task(run.model, run.tokenizer, task, limit=2, bootstrap=50)
    assert two["n_items"] == 6 and all(
        g["n_items"] == 2 for k, g in two["groups"].items() if k.startswith("paradigm:")
    )
    first_two = [i for i, g in enumerate(task.groups) if task.groups[: i + 1].count(g) <= 2]
    assert two["accuracy"] == pytest.approx(hit[first_two].mean())


def test_cli_selection_errors_exit_2_in_one_line(eval_run, tmp_path, capsys):
    run = eval_run
    code = main(["eval", str(run), "--task", "blimp:nonexistent", "--tasks-dir", str(FIXTURES)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'nonexistent'" in err
    folder = _copy_fixtures(tmp_path)
    (folder / "word_order.jsonl").write_text('{"sentence_good": "a b."}\n', encoding="utf-8")
    assert main(["eval", str(run), "--task", "blimp", "--tasks-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'word_order.jsonl line 1: field "sentence_bad"' in err


@pytest.mark.slow
def test_cli_prints_groups_and_writes_them(eval_run, capsys):
    run = eval_run
    args = ["eval", str(run), "--task", "blimp", "--tasks-dir", str(FIXTURES), "--limit", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "field:syntax_semantics" in out and "paradigm:word_order" in out and "GPT-2" in out
    written = run / "eval" / "priming-blimp-0shot-limit3perparadigm.json"
    result = json.loads(written.read_text(encoding="utf-8"))
    assert result["n_items"] == 3 + 3 + 3 and result["limit"] == 3
    assert result["groups"]["paradigm:toy_binding"]["n_items"] == 3


REAL = default_tasks_dir()


@pytest.mark.shared_data
@pytest.mark.skipif(
    REAL is None or not (REAL / "blimp").is_dir(),
    reason="../shared/data/blimp (or $MOELAB_TASKS_DIR/blimp) is absent: real BLiMP not read",
)
def test_real_blimp_files():
    task = get_task("blimp", REAL)
    assert len(task.items) == 67 * 1000
    paradigms = {g[1].removeprefix("paradigm:") for g in task.groups}
    assert paradigms == set(PARADIGMS)  # the hub loader's table matches the official files
    for uid in paradigms:
        assert (f"field:{PARADIGMS[uid]}", f"paradigm:{uid}") in task.groups
    fields = [g[0] for g in task.groups]
    counts = {f: fields.count(f"field:{f}") // 1000 for f in FIELDS}
    assert counts == {"syntax": 26, "morphology": 18, "semantics": 9, "syntax_semantics": 14}
    assert all(it.contexts == ("",) and it.label == 0 for it in task.items)
    # overall = mean over the 67 paradigms = the file's own "overall" summary row
    summary = [json.loads(line) for line in (REAL / "blimp" / REFERENCE_FILE).open()]
    (overall,) = [
        r for r in summary if r["UID"] == "overall" and r["linguistics_term"] == "overall"
    ]
    for key, label in (("ngram", "5-gram"), ("lstm", "LSTM"), ("txl", "Transformer-XL")):
        assert task.reference[label]["overall"] == pytest.approx(overall[key], abs=1e-8)
    assert task.reference["GPT-2"]["overall"] == pytest.approx(overall["gpt2"], abs=1e-8)
    assert math.isclose(task.reference["GPT-2"]["paradigm:anaphor_gender_agreement"], 0.994)
