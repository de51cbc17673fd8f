"""Few-shot priming: prompt construction, determinism, statistics, and the generic JSONL schema
with its errors (file, line and field named)."""

from __future__ import annotations

import json

import pytest

from moelab.errors import MoelabError
from moelab.eval.fewshot import sample_shots
from moelab.eval.priming import build_prompts, evaluate_task, example_prompts
from moelab.eval.stats import bootstrap_ci
from moelab.eval.tasks import get_task
from moelab.eval.tasks.items import Item, Task
from test_eval_support import tiny_model, tiny_tokenizer


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


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.get_vocab_size(), moe=True)


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
