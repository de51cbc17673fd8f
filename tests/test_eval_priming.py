"""Few-shot priming: prompt construction, determinism, statistics, and the generic JSONL schema
with its errors (file, line and field named)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moelab.errors import MoelabError
from moelab.eval.fewshot import sample_shots
from moelab.eval.priming import build_prompts, evaluate_task, example_prompts
from moelab.eval.stats import bootstrap_ci
from moelab.eval.tasks import get_task
from moelab.eval.tasks.items import Item, Task


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _choice_rows(n, offset=0):
    return [
        {
            "context": f"Question {i + offset}: is {i + offset} even?",
            "choices": ["yes", "no"],
            "label": (i + offset) % 2,
        }
        for i in range(n)
    ]


def test_shots_are_k_distinct_examples_never_the_item(tmp_path):
    rows = _choice_rows(12)
    rows.append(dict(rows[3]))  # a duplicate of item 3 in the same split
    task = get_task(str(_write_jsonl(tmp_path / "even.jsonl", rows)))
    assert task.train_items is None  # shots come from the evaluated split
    for index in range(len(task.items)):
        for seed in range(5):
            shots = sample_shots(task, index, 4, seed)
            demos = [s.demonstration() for s in shots]
            assert len(demos) == 4 and len(set(demos)) == 4
            assert task.items[index].demonstration() not in demos
            prompt = build_prompts(task, index, 4, seed)[0][0]
            assert prompt.count("\n") == 4  # k shots, each followed by the separator
            for d in demos:
                assert d + "\n" in prompt
    with pytest.raises(MoelabError, match="12 shots requested"):
        sample_shots(task, 0, 12, 0)  # 13 rows, one is the item and one its duplicate


def test_shots_come_from_the_train_file_when_present(tmp_path):
    _write_jsonl(tmp_path / "t.jsonl", _choice_rows(3))
    _write_jsonl(tmp_path / "t.train.jsonl", _choice_rows(6, offset=100))
    task = get_task(str(tmp_path / "t.jsonl"))
    assert task.train_split == "train" and len(task.train_items) == 6
    shots = sample_shots(task, 0, 5, seed=1)
    assert all(s in task.train_items for s in shots)
    assert "Question 1:" not in build_prompts(task, 0, 5, 1, separator=" || ")[0][0]


def test_same_seed_same_result_and_stats(tmp_path, tok, model):
    task = get_task(str(_write_jsonl(tmp_path / "even.jsonl", _choice_rows(10))))
    a = evaluate_task(model, tok, task, shots=2, seeds=3, limit=6)
    b = evaluate_task(model, tok, task, shots=2, seeds=3, limit=6)
    assert a["metrics"] == b["metrics"]
    assert a["seeds"] == [0, 1, 2] and a["n_items"] == 6 and a["chance"] == 0.5
    assert build_prompts(task, 1, 2, seed=0) != build_prompts(task, 1, 2, seed=1)
    for mode, m in a["metrics"].items():
        assert len(m["per_seed"]) == 3
        assert m["mean"] == pytest.approx(sum(m["per_seed"]) / 3), mode
        lo, hi = m["ci95"]
        assert 0.0 <= lo <= m["mean"] <= hi <= 1.0
    assert a["accuracy"] == a["metrics"]["mean"]["mean"]  # the paper's default mode
    default = evaluate_task(model, tok, task, shots=1, limit=1)
    assert len(default["seeds"]) == 25  # the paper's 25 draws when k > 0


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 70, n_resamples=2000)
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_partial_scoring_and_last_word_files(tmp_path, tok, model):
    partial = _write_jsonl(
        tmp_path / "wino.jsonl",
        [
            {
                "contexts": [
                    "The cat sat on the mat so the cat",
                    "The cat sat on the mat so the mat",
                ],
                "continuation": "was happy.",
                "label": 0,
            },
        ]
        * 2,
    )
    task = get_task(str(partial))
    assert task.items[0].candidates() == [
        ("The cat sat on the mat so the cat", " was happy."),
        ("The cat sat on the mat so the mat", " was happy."),
    ]
    words = _write_jsonl(
        tmp_path / "lw.jsonl", [{"context": "The cat sat on the", "continuation": "mat"}]
    )
    lw = get_task(str(words))
    assert lw.kind == "last_word" and lw.items[0].candidates() == [("The cat sat on the", " mat")]
    result = evaluate_task(model, tok, lw)
    assert set(result["metrics"]) == {"greedy"} and result["chance"] == 0.0


@pytest.mark.parametrize(
    "line, fragment",
    [
        (
            '{"context": "a", "choices": ["x", "y"], "label": 2}',
            'line 2: field "label": label 2 is out of range',
        ),
        (
            '{"context": "a", "choices": ["x", "y"], "label": "first"}',
            'line 2: field "label": expected an integer',
        ),
        (
            '{"context": 3, "choices": ["x", "y"], "label": 0}',
            'line 2: field "context": expected a string',
        ),
        (
            '{"context": "a", "choices": "xy", "label": 0}',
            'line 2: field "choices": expected a list of strings',
        ),
        ('{"context": "a", "label": 0}', 'line 2: field "choices": missing'),
        ('{"contexts": ["a", "b"], "label": 0}', 'line 2: field "continuation": missing'),
        ('{"context": "a", "choices": ["x", "y"]}', 'line 2: field "label": missing'),
        ('{"context": "a", "choices": ["x', "line 2: not valid JSON"),
        ('["a", "b"]', "line 2: expected a JSON object"),
    ],
)
def test_bad_task_files_name_file_line_and_field(tmp_path, line, fragment):
    good = '{"context": "q", "choices": ["x", "y"], "label": 1}'
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(MoelabError) as err:
        get_task(str(path))
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_unknown_task_and_missing_files(tmp_path):
    with pytest.raises(MoelabError, match="did you mean hellaswag"):
        get_task("helaswag", tmp_path)
    with pytest.raises(MoelabError, match="folder .*piqa not found"):
        get_task("piqa", tmp_path)
    with pytest.raises(MoelabError, match="task file not found"):
        get_task(str(tmp_path / "none.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(MoelabError, match="no items"):
        get_task(str(tmp_path / "empty.jsonl"))


def test_example_prompts_show_candidates_and_calibration():
    task = Task(
        "t",
        "choice",
        [Item(("Is it?",), ("yes", "no"), 1), Item(("Q2",), ("a", "b"), 0)],
        "eval",
        neutral_prompt="Answer:",
    )
    shown = example_prompts(task, shots=1, seed=0)
    assert shown["candidates"][1] == {"context": "Q2 a\nIs it?", "continuation": " no"}
    assert shown["calibration"][0] == {"context": "Answer:", "continuation": " yes"}


def test_non_utf8_task_file_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = b'{"context": "a", "choices": ["x", "y"], "label": 0}\n'
    path.write_bytes(
        good
        + '{"context": "d\u00e9j\u00e0", "choices": ["x", "y"], "label": 0}\n'.encode("latin-1")
    )
    with pytest.raises(MoelabError, match="line 2: not UTF-8 text"):
        get_task(str(path))
    path.write_text(
        '{"context": "a", "choices": ["x", "y"], "label": "\u00b2"}\n', encoding="utf-8"
    )
    with pytest.raises(MoelabError, match='line 1: field "label": expected an integer'):
        get_task(str(path))


def test_continuous_score_is_the_softmax_of_the_primary_mode(tmp_path, tok, model):
    task = get_task(str(_write_jsonl(tmp_path / "even.jsonl", _choice_rows(10))))
    r = evaluate_task(model, tok, task, shots=1, seeds=2, limit=8, keep_scores=True)
    assert r["primary_mode"] == "mean" and r["accuracy_ci95"] == r["metrics"]["mean"]["ci95"]
    probs = []
    for seed_scores in r["scores"]:
        row = []
        for i, by_mode in enumerate(seed_scores):
            s = np.asarray(by_mode["mean"])
            row.append(np.exp(s[task.items[i].label]) / np.exp(s).sum())
        probs.append(row)
    probs = np.asarray(probs)
    assert r["score"] == pytest.approx(probs.mean(), abs=1e-9)
    assert r["score_per_seed"] == pytest.approx(probs.mean(axis=1).tolist(), abs=1e-9)
    assert r["score_ci95"][0] <= r["score"] <= r["score_ci95"][1]
    assert r["score_chance"] == 0.5 and r["groups"] == {} and r["reference"] == {}
    for mode, m in r["metrics"].items():  # every mode's own score is reported too
        assert 0.0 < m["score"] < 1.0, mode


def test_primary_mode_comes_from_the_task(tok, model):
    items = [Item(("Is it?",), ("yes", "no", "maybe so"), i % 3) for i in range(6)]
    task = Task("t", "choice", items, "eval", primary_mode="sum")
    r = evaluate_task(model, tok, task, keep_scores=True)
    assert r["primary_mode"] == "sum" and r["accuracy"] == r["metrics"]["sum"]["mean"]
    # p(correct) / sum_j p(candidate j) with the summed log-probs, averaged over items
    sums = np.asarray([x["sum"] for x in r["scores"][0]])  # (items, candidates)
    p = np.exp(sums - np.logaddexp.reduce(sums, axis=1, keepdims=True))
    assert r["score"] == pytest.approx(np.mean([p[i, i % 3] for i in range(6)]))
    assert r["score_chance"] == pytest.approx(1 / 3)
    task.neutral_prompt = None  # no calibration prompt: no calibrated mode, no extra sequences
    r2 = evaluate_task(model, tok, task)
    assert "calibrated" not in r2["metrics"] and r2["compute"]["requests"] == 18
    task.primary_mode = "calibrated"
    with pytest.raises(MoelabError, match="primary scoring mode 'calibrated'"):
        evaluate_task(model, tok, task)


def test_several_correct_candidates_count_together(tok, model):
    # ReCoRD-style aliases: candidates 0 and 2 are both right
    items = [Item(("Who?",), ("Obama", "Biden", "Barack Obama"), 0, golds=(0, 2))] * 2
    task = Task("aliases", "choice", items, "eval", primary_mode="sum")
    r = evaluate_task(model, tok, task, keep_scores=True)
    s = np.asarray(r["scores"][0][0]["sum"])
    p = np.exp(s - np.logaddexp.reduce(s))
    assert r["score"] == pytest.approx(p[0] + p[2])
    assert r["accuracy"] == float(int(np.argmax(s)) in (0, 2))
    assert r["chance"] == r["score_chance"] == pytest.approx(2 / 3)


def test_per_run_sampling_uses_one_example_set_per_seed(tmp_path, tok, model):
    task = get_task(str(_write_jsonl(tmp_path / "even.jsonl", _choice_rows(12))))

    def shots(index, seed, sampling):
        return [s.demonstration() for s in sample_shots(task, index, 3, seed, sampling)]

    for seed in range(3):
        sets = [shots(i, seed, "per_run") for i in range(12)]
        common = max(sets, key=sets.count)
        users = [i for i, s in enumerate(sets) if s == common]
        # every item not among the 3 examples gets the very same examples, in the same order
        members = [i for i in range(12) if task.items[i].demonstration() in common]
        assert len(users) == 12 - len(members) and len(members) == 3
        for i in members:  # an example item takes the next one of the permutation instead
            assert task.items[i].demonstration() not in sets[i] and len(set(sets[i])) == 3
    assert shots(0, 0, "per_run") != shots(0, 1, "per_run")  # another seed, another set
    per_item = {tuple(shots(i, 0, "per_item")) for i in range(12)}
    assert len(per_item) > 3  # today's default: every item draws its own
    r = evaluate_task(model, tok, task, shots=2, seeds=2, fewshot_sampling="per_run")
    assert r["fewshot_sampling"] == "per_run"
    # one prompt prefix per seed: far fewer distinct contexts than one draw per item
    per_item_run = evaluate_task(model, tok, task, shots=2, seeds=2)
    assert r["compute"]["unique_sequences"] <= per_item_run["compute"]["unique_sequences"]
    with pytest.raises(MoelabError, match="fewshot_sampling must be one of per_item, per_run"):
        evaluate_task(model, tok, task, shots=1, fewshot_sampling="per_seed")


def test_limit_counts_per_group_when_the_task_says_so(tok, model):
    items = [Item(("",), (f"the cat {i}.", f"cat the {i}."), 0, "") for i in range(7)]
    groups = [("field:a", "paradigm:x")] * 4 + [("field:a", "paradigm:y")] * 3
    task = Task("g", "choice", items, "eval", groups=groups, limit_per="paradigm")
    r = evaluate_task(model, tok, task, limit=2)
    assert r["n_items"] == 4 and r["limit"] == 2 and r["limit_per"] == "paradigm"
    assert {k: g["n_items"] for k, g in r["groups"].items()} == {
        "field:a": 4,
        "paradigm:x": 2,
        "paradigm:y": 2,
    }
    assert r["groups"]["field:a"]["accuracy"] == r["accuracy"]
