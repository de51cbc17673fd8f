"""`moelab eval` refuses bad input with one line and exit 2; RUN_DIR/eval is never half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
    swap_in_checkpoints,
    truncate_weights_keeping_checksums,
    unreadable_file,
    write_corpus,
    write_jsonl,
    writes_only_under,
)

CHOICE_ROWS = [
    {"context": "the cat", "choices": ["sleeps quietly", "barks loudly"], "label": 0},
    {"context": "a dog", "choices": ["sleeps quietly", "barks loudly"], "label": 1},
    {"context": "the horse", "choices": ["runs fast", "sings sweetly"], "label": 0},
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Task files and text files, good and bad, shared by the cases (never written)."""
    d = tmp_path_factory.mktemp("eval_inputs")
    write_jsonl(d / "good.jsonl", CHOICE_ROWS)
    write_jsonl(d / "wrong_schema.jsonl", [{"question": "q", "answer": "a"}])
    write_jsonl(d / "label_range.jsonl", [{**CHOICE_ROWS[0], "label": 5}])
    write_jsonl(d / "label_type.jsonl", [{**CHOICE_ROWS[0], "label": "first"}])
    write_jsonl(d / "one_choice.jsonl", [{"context": "a", "choices": ["b"], "label": 0}])
    write_jsonl(d / "mixed.jsonl", [CHOICE_ROWS[0], {"context": "a", "continuation": "b"}])
    (d / "not_json.jsonl").write_text(
        '{"context": "a", "choices": ["b", "c"], "label": 0}\n{oops\n'
    )
    (d / "array.jsonl").write_text("[1, 2, 3]\n")
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n\n  \n")
    row = json.dumps(
        {"context": "d\u00e9j\u00e0", "choices": ["vu", "lu"], "label": 0}, ensure_ascii=False
    )
    (d / "latin1.jsonl").write_bytes((row + "\n").encode("latin-1"))
    (d / "text.txt").write_text("the cat sleeps quietly near the river.\n" * 5)
    (d / "empty.txt").write_text("")
    (d / "notes").mkdir()
    (d / "notes" / "x.md").write_text("# not prepared data\n")
    unreadable_file(d, "secret.txt")
    return d


def _case(id_: str, args: list, match: list, bug: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(args, match, id=id_, marks=marks)


CASES = [
    _case("nothing-to-do", [], [r"nothing to evaluate", r"--ppl"]),
    _case("limit-zero", ["--task", "{in}/good.jsonl", "--limit", "0"], [r"--limit"]),
    _case("context-zero", ["--ppl", "--context", "0"], [r"--context"]),
    _case("context-too-long", ["--ppl", "--context", "4096"], [r"--context", r"16"]),
    _case("stride-negative", ["--ppl", "--stride", "-1"], [r"--stride"]),
    _case("stride-above-context", ["--ppl", "--stride", "99"], [r"--stride"]),
    _case("max-tokens-zero", ["--ppl", "--max-tokens", "0"], [r"--max-tokens"]),
    _case(
        "capacity-zero",
        ["--ppl", "--capacity-factor", "0"],
        [r"capacity-factor", r"> 0"],
    ),
    _case(
        "capacity-word",
        ["--ppl", "--capacity-factor", "big"],
        [r"capacity-factor"],
    ),
    _case("step-missing", ["--ppl", "--step", "3"], [r"step 3"]),
    _case("device-unknown", ["--ppl", "--device", "tpu"], [r"--device", r"tpu"]),
    _case("ppl-missing-file", ["--ppl", "{in}/nope.txt"], [r"nope\.txt", r"no such file"]),
    _case("ppl-missing-glob", ["--ppl", "{in}/*.none"], [r"no file matches"]),
    _case("ppl-plain-folder", ["--ppl", "{in}/notes"], [r"prepared data", r"\*\.txt"]),
    _case(
        "ppl-unreadable",
        ["--ppl", "{in}/secret.txt"],
        [r"secret|mem"],
    ),
    _case("ppl-empty-file", ["--ppl", "{in}/empty.txt"], [r"empty\.txt"]),
    _case("task-unknown-name", ["--task", "hellaswagg"], [r"unknown task", r"hellaswag"]),
    _case("task-missing-file", ["--task", "{in}/nope.jsonl"], [r"nope\.jsonl", r"not found"]),
    _case("task-wrong-schema", ["--task", "{in}/wrong_schema.jsonl"], [r"line 1", r"context"]),
    _case("task-label-range", ["--task", "{in}/label_range.jsonl"], [r"line 1", r"label"]),
    _case("task-label-type", ["--task", "{in}/label_type.jsonl"], [r"label", r"integer"]),
    _case("task-one-choice", ["--task", "{in}/one_choice.jsonl"], [r"choices", r"at least 2"]),
    _case("task-mixed-kinds", ["--task", "{in}/mixed.jsonl"], [r"line 2", r"one kind"]),
    _case("task-not-json", ["--task", "{in}/not_json.jsonl"], [r"line 2", r"not valid JSON"]),
    _case("task-array-rows", ["--task", "{in}/array.jsonl"], [r"line 1", r"JSON object"]),
    _case("task-empty", ["--task", "{in}/empty.jsonl"], [r"no items"]),
    _case("task-blank", ["--task", "{in}/blank.jsonl"], [r"no items"]),
    _case(
        "task-latin1",
        ["--task", "{in}/latin1.jsonl"],
        [r"latin1\.jsonl", r"UTF-8"],
    ),
    _case(
        "task-folder-missing", ["--task", "piqa", "--tasks-dir", "{in}"], [r"piqa", r"--tasks-dir"]
    ),
    _case("shots-negative", ["--task", "{in}/good.jsonl", "--shots", "-1"], [r"--shots"]),
    _case("shots-too-many", ["--task", "{in}/good.jsonl", "--shots", "10"], [r"shots"]),
    _case("seeds-zero", ["--task", "{in}/good.jsonl", "--shots", "1", "--seeds", "0"], [r"seeds"]),
    _case(
        "batch-size-zero",
        ["--ppl", "--batch-size", "0"],
        [r"batch-size"],
    ),
    _case(
        "batch-size-negative",
        ["--ppl", "--batch-size", "-2"],
        [r"batch-size"],
    ),
]


@pytest.mark.parametrize("args, match", CASES)
def test_bad_input_is_refused_cleanly(args, match, finished_run, inputs, capsys):
    argv = ["eval", finished_run, *[a.replace("{in}", str(inputs)) for a in args]]
    expect_user_error(capsys, argv, watch=[finished_run, inputs], match=match)


def test_positive_control(finished_run, inputs, tmp_path, capsys):
    """Good input works and writes result files under RUN_DIR/eval only."""
    run = copy_run(finished_run, tmp_path / "run")
    argv = ["eval", run, "--ppl", inputs / "text.txt", "--max-tokens", "32"]
    writes_only_under(capsys, [*argv, "--task", inputs / "good.jsonl"], run)


def test_missing_or_foreign_run_folder(inputs, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    for run in (tmp_path / "nope", tmp_path / "mine"):
        expect_user_error(
            capsys, ["eval", run, "--ppl"], watch=[tmp_path], match=[r"does not exist|run folder"]
        )


def test_truncated_safetensors(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    truncate_weights_keeping_checksums(run)
    expect_user_error(
        capsys, ["eval", run, "--ppl"], watch=[tmp_path], match=[r"model\.safetensors"]
    )


def test_checkpoint_from_another_config(finished_run, dense_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    swap_in_checkpoints(run, dense_run)
    expect_user_error(
        capsys, ["eval", run, "--ppl"], watch=[tmp_path], match=[r"model\.safetensors", r"fit"]
    )


def test_prepared_data_of_another_tokenizer(finished_run, tmp_path, capsys):
    """--ppl on a prepared folder made with another tokenizer: its token ids mean nothing to
    the run, so it is refused (the fix: pass the text files)."""
    from moelab.data import prepare

    src = write_corpus(tmp_path / "src", 12, seed=3)
    prepare(tmp_path / "other", sources=[f"alpha={src}/*.txt"], vocab_size=280)
    run = copy_run(finished_run, tmp_path / "run")
    expect_user_error(
        capsys,
        ["eval", run, "--ppl", tmp_path / "other"],
        watch=[tmp_path],
        match=[r"different tokenizer", r"text files"],
    )


def test_run_data_with_a_shard_of_another_tokenizer(shared_data, finished_run, tmp_path, capsys):
    """The run's own data folder with one validation shard swapped for another tokenizer's."""
    from moelab.data import prepare

    data = shutil.copytree(shared_data, tmp_path / "data")
    src = write_corpus(tmp_path / "src", 12, seed=3)
    prepare(tmp_path / "other", sources=[f"alpha={src}/*.txt"], vocab_size=280)
    for name in ("alpha.val.tokens.bin", "alpha.val.offsets.bin"):
        shutil.copyfile(tmp_path / "other" / name, data / name)
    expect_user_error(
        capsys,
        ["eval", finished_run, "--ppl", data],
        watch=[tmp_path, finished_run],
        match=[r"alpha\.val", r"prepare again"],
    )


def test_result_folder_that_cannot_be_created(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "eval").write_text("not a folder\n")
    expect_user_error(
        capsys,
        ["eval", run, "--ppl", "--max-tokens", "32"],
        watch=[tmp_path],
        match=[r"eval"],
    )


def _run_on_own_data(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A tiny run trained on its own prepared folder (so the test may replace that folder)."""
    from _robust import tiny_run_config, write_yaml
    from moelab.data import prepare

    src = write_corpus(tmp_path / "src_a", 20, seed=1)
    data = tmp_path / "data"
    prepare(data, sources=[f"alpha={src}/*.txt"], vocab_size=300)
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(data, moe=False, budget_steps=2))
    rc, _, err = run_cli(capsys, ["train", cfg, "--out", tmp_path / "run", "--no-progress"])
    assert rc == 0, err
    return tmp_path / "run", data


def test_run_data_gone(tmp_path, capsys):
    run, data = _run_on_own_data(tmp_path, capsys)
    shutil.rmtree(data)
    expect_user_error(
        capsys, ["eval", run, "--ppl"], watch=[tmp_path], match=[r"data", r"moelab prepare"]
    )


def test_run_data_reprepared_with_another_tokenizer(tmp_path, capsys):
    from moelab.data import prepare

    run, data = _run_on_own_data(tmp_path, capsys)
    shutil.rmtree(data)
    src = write_corpus(tmp_path / "src_b", 20, seed=7)
    prepare(data, sources=[f"alpha={src}/*.txt"], vocab_size=300)
    assert (data / "tokenizer.json").read_bytes() != (run / "tokenizer.json").read_bytes()
    expect_user_error(
        capsys,
        ["eval", run, "--ppl", "--max-tokens", "32"],
        watch=[tmp_path],
        match=[r"tokenizer"],
    )
