"""`moelab finetune` refuses bad input with one line and exit 2; the run is never changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _robust import (
    copy_run,
    expect_user_error,
    swap_in_checkpoints,
    truncate_weights_keeping_checksums,
    unreadable_file,
    write_jsonl,
    writes_only_under,
)

ROWS = [
    {"context": f"the {a}", "choices": ["sleeps quietly", "barks loudly"], "label": i % 2}
    for i, a in enumerate(["cat", "dog", "owl", "bee", "fish", "frog", "wolf", "duck"])
]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("finetune_tasks")
    write_jsonl(d / "good.jsonl", ROWS[:3])
    write_jsonl(d / "good.train.jsonl", ROWS)
    write_jsonl(d / "notrain.jsonl", ROWS[:3])
    write_jsonl(d / "tiny.jsonl", ROWS[:3])
    write_jsonl(d / "tiny.train.jsonl", ROWS[:1])
    write_jsonl(d / "lastword.jsonl", [{"context": "the cat", "continuation": "sleeps"}])
    write_jsonl(d / "lastword.train.jsonl", [{"context": "a dog", "continuation": "barks"}] * 4)
    write_jsonl(d / "badtrain.jsonl", ROWS[:3])
    write_jsonl(d / "badtrain.train.jsonl", [{"context": "a", "choices": "ab", "label": 0}])
    write_jsonl(d / "kinds.jsonl", ROWS[:3])
    write_jsonl(d / "kinds.train.jsonl", [{"context": "a", "continuation": "b"}] * 4)
    (d / "latin1.jsonl").write_bytes(
        json.dumps({**ROWS[0], "context": "d\u00e9j\u00e0"}, ensure_ascii=False).encode("latin-1")
    )
    unreadable_file(d, "secret.jsonl")
    return d


# (id, extra arguments, regexes); {t} is the tasks folder
CASES = [
    ("epochs-zero", ["--task", "{t}/good.jsonl", "--epochs", "0"], [r"--epochs", r">= 1"]),
    ("batch-zero", ["--task", "{t}/good.jsonl", "--batch-size", "0"], [r"--batch-size"]),
    ("lrs-words", ["--task", "{t}/good.jsonl", "--lrs", "fast,slow"], [r"--lrs"]),
    ("lrs-negative", ["--task", "{t}/good.jsonl", "--lrs=-1e-3"], [r"--lrs", r"positive"]),
    ("lrs-empty", ["--task", "{t}/good.jsonl", "--lrs", ","], [r"--lrs"]),
    ("heldout-one", ["--task", "{t}/good.jsonl", "--heldout-fraction", "1"], [r"heldout"]),
    ("heldout-zero", ["--task", "{t}/good.jsonl", "--heldout-fraction", "0"], [r"heldout"]),
    ("limit-zero", ["--task", "{t}/good.jsonl", "--limit", "0"], [r"--limit"]),
    ("train-limit-zero", ["--task", "{t}/good.jsonl", "--train-limit", "0"], [r"--train-limit"]),
    ("max-len-zero", ["--task", "{t}/good.jsonl", "--max-len", "0"], [r"--max-len"]),
    ("capacity-zero", ["--task", "{t}/good.jsonl", "--capacity-factor", "0"], [r"capacity"]),
    ("capacity-word", ["--task", "{t}/good.jsonl", "--capacity-factor", "x"], [r"capacity"]),
    ("step-missing", ["--task", "{t}/good.jsonl", "--step", "3"], [r"step 3"]),
    ("device-unknown", ["--task", "{t}/good.jsonl", "--device", "tpu"], [r"tpu"]),
    ("task-missing", ["--task", "{t}/nope.jsonl"], [r"nope\.jsonl", r"not found"]),
    ("task-unknown-name", ["--task", "sst3"], [r"unknown task", r"sst2"]),
    ("task-no-train-file", ["--task", "{t}/notrain.jsonl"], [r"no train split", r"train file"]),
    ("task-too-few-train", ["--task", "{t}/tiny.jsonl"], [r"too few training items"]),
    ("task-last-word", ["--task", "{t}/lastword.jsonl"], [r"not a fine-tuning task"]),
    ("task-bad-train-schema", ["--task", "{t}/badtrain.jsonl"], [r"train\.jsonl line 1"]),
    ("task-train-other-kind", ["--task", "{t}/kinds.jsonl"], [r"kinds\.train\.jsonl"]),
    ("task-latin1", ["--task", "{t}/latin1.jsonl"], [r"latin1\.jsonl", r"UTF-8"]),
    ("task-unreadable", ["--task", "{t}/secret.jsonl"], [r"secret|mem"]),
    ("task-folder", ["--task", "{t}"], [r"finetune_tasks"]),
]
BUGS: dict[str, str] = {}  # case id -> reason, for known bugs (strict xfail)


def _params():
    out = []
    for id_, args, match in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=BUGS[id_])] if id_ in BUGS else []
        out.append(pytest.param(args, match, id=id_, marks=marks))
    return out


@pytest.mark.parametrize("args, match", _params())
def test_bad_input_is_refused_cleanly(args, match, finished_run, tasks, capsys):
    argv = ["finetune", finished_run, *[a.replace("{t}", str(tasks)) for a in args]]
    expect_user_error(capsys, argv, watch=[finished_run, tasks], match=match)


def test_positive_control(finished_run, tasks, tmp_path, capsys):
    """Good input fine-tunes and writes only under RUN_DIR/eval."""
    run = copy_run(finished_run, tmp_path / "run")
    argv = ["finetune", run, "--task", tasks / "good.jsonl", "--epochs", "1", "--lrs", "1e-3"]
    writes_only_under(capsys, [*argv, "--batch-size", "4"], run)


def test_missing_run(tasks, tmp_path, capsys):
    argv = ["finetune", tmp_path / "nope", "--task", tasks / "good.jsonl"]
    expect_user_error(capsys, argv, watch=[tmp_path], match=[r"nope", r"does not exist"])


def test_truncated_safetensors(finished_run, tasks, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    truncate_weights_keeping_checksums(run)
    argv = ["finetune", run, "--task", tasks / "good.jsonl"]
    expect_user_error(capsys, argv, watch=[tmp_path], match=[r"model\.safetensors"])


def test_checkpoint_from_another_config(finished_run, dense_run, tasks, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    swap_in_checkpoints(run, dense_run)
    argv = ["finetune", run, "--task", tasks / "good.jsonl"]
    expect_user_error(capsys, argv, watch=[tmp_path], match=[r"model\.safetensors", r"fit"])
