"""The paper's ReCoRD (zero-shot), OpenBookQA (few-shot) and MNLI (fine-tuning) loaders on small
fixture files in each task's official format (tests/fixtures/tasks, text written for these
tests), their error lines for files in a wrong schema, and each task scored end to end on a tiny
trained model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _eval_models import hand_logprobs
from _robust import expect_user_error, run_cli
from moelab.errors import MoelabError
from moelab.eval.tasks import get_task
from moelab.eval.tasks.mnli import load_mnli, load_mnli_mismatched
from moelab.eval.tasks.openbookqa import load_openbookqa
from moelab.eval.tasks.record import exact_match, load_record, normalize_answer

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def _copy(name: str, tmp_path: Path, dest: str | None = None) -> Path:
    """A writable copy of one fixture task folder under ``tmp_path/tasks``."""
    target = tmp_path / "tasks" / (dest or name)
    shutil.copytree(FIXTURES / name, target)
    return target


def _one_line_error(call, *patterns: str) -> str:
    with pytest.raises(MoelabError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for p in patterns:
        assert p in message, f"{p!r} not in {message!r}"
    return message


# --- ReCoRD ----------------------------------------------------------------------------------


def test_record_items_candidates_and_gold_aliases():
    task = get_task("record", FIXTURES)
    assert (task.name, task.split, task.kind, len(task.items)) == ("record", "val", "choice", 5)
    assert task.primary_mode == "mean" and task.finetune is None and task.train_items is None
    first = task.items[0]
    # the passage, a blank line, then each highlight as "  - text.\n" (harness template)
    assert first.contexts[0].endswith(
        "kept the old clock tower.\n\n"
        "  - Millbrook opened a new library after two years.\n"
        "  - Ellen Park praised the Harbour Trust.\n"
    )
    assert "@highlight" not in first.contexts[0]
    # distinct entity strings, sorted ("Millbrook" occurs twice in the passage)
    entities = ["Ellen Park", "Harbour Trust", "Millbrook", "Millbrook Primary", "Park"]
    entities.append("Tomas Reyes")
    assert first.targets == tuple(f"  - {e} spoke to reporters." for e in entities)
    assert first.delimiter == ""
    # both aliases of the mayor are right: max over the gold answers, as the official scorer
    assert first.correct == (0, 4) and first.label == 0 and first.chance == 2 / 6
    assert [first.is_correct(i) for i in range(6)] == [True, False, False, False, True, False]
    assert task.items[1].correct == (1,)  # Harbour Trust
    # "the U.S. Forest Service" matches the entity "U.S. Forest Service" after normalisation
    boats = task.items[2]
    assert boats.targets[boats.label] == "  - Boats came from the U.S. Forest Service."
    assert task.items[4].correct == (1,)  # a gold answer listed twice is one candidate
    assert task.chance == pytest.approx(np.mean([2 / 6, 1 / 6, 1 / 4, 1 / 4, 1 / 4]))


def test_record_normalisation_is_the_official_scorers():
    assert normalize_answer("The  U.S. Forest-Service!") == "us forestservice"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("Park", ["Ellen Park", "park."]) and not exact_match("Ellen", ["Park"])


def _record_row(**changes) -> dict:
    text = "Anna met Ben in Oslo.\n@highlight\nAnna visited Oslo"
    row = {
        "passage": {
            "text": text,
            "entities": [{"start": 0, "end": 3}, {"start": 9, "end": 11}, {"start": 16, "end": 19}],
        },
        "qas": [{"query": "@placeholder is a city.", "answers": [{"text": "Oslo"}], "idx": 0}],
    }
    row.update(changes)
    return row


def _record_file(tmp_path: Path, row: dict) -> Path:
    folder = tmp_path / "tasks" / "superglue_record"
    folder.mkdir(parents=True)
    (folder / "val.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return folder


def test_record_small_row_parses(tmp_path):
    item = load_record(_record_file(tmp_path, _record_row())).items[0]
    assert item.targets == ("  - Anna is a city.", "  - Ben is a city.", "  - Oslo is a city.")
    assert item.correct == (2,)


@pytest.mark.parametrize(
    "changes, field, why",
    [
        ({"passage": "Anna met Ben."}, '"passage"', "expected an object"),
        (
            {"passage": {"text": "Anna", "entities": [{"start": 0, "end": 9}]}},
            '"passage.entities[0].end"',
            "outside the passage",
        ),
        (
            {"qas": [{"query": "Anna is here.", "answers": [{"text": "Anna"}]}]},
            '"qas[0].query"',
            "@placeholder",
        ),
        (
            {"qas": [{"query": "@placeholder won.", "answers": [{"text": "Carl"}]}]},
            '"qas[0].answers"',
            "matches a passage entity",
        ),
        ({"qas": [{"query": "@placeholder won."}]}, '"qas[0].answers"', "no gold answer"),
        ({"qas": "none"}, '"qas"', "list of objects"),
    ],
    ids=[
        "passage-string",
        "span-outside",
        "no-placeholder",
        "answer-not-entity",
        "test-split",
        "qas",
    ],
)
def test_record_wrong_schema_is_one_line_naming_file_and_field(tmp_path, changes, field, why):
    folder = _record_file(tmp_path, _record_row(**changes))
    _one_line_error(lambda: load_record(folder), str(folder / "val.jsonl"), "line 1", field, why)


# --- OpenBookQA ------------------------------------------------------------------------------


def test_openbookqa_jsonl_items_and_template():
    task = get_task("openbookqa", FIXTURES)
    assert (task.split, len(task.items), task.train_split, len(task.train_items)) == (
        "test",
        4,
        "train",
        6,
    )
    assert task.primary_mode == "calibrated" and task.finetune == "choice"
    assert [it.label for it in task.items] == [0, 1, 2, 3]  # answer keys A, B, C, D
    first = task.items[0]
    assert first.candidates()[0] == ("Which of these conducts electricity best?", " a copper wire")
    assert first.n_candidates == 4 and task.chance == 0.25
    assert task.sources[0].endswith("openbookqa/Main/test.jsonl")


def test_openbookqa_tsv_reads_the_same_items():
    jsonl = get_task("openbookqa", FIXTURES)
    tsv = load_openbookqa(FIXTURES / "openbookqa_tsv")
    assert tsv.sources[0].endswith("test.tsv")
    assert tsv.items == jsonl.items and tsv.train_items == jsonl.train_items


def test_openbookqa_tsv_with_complete_question_only(tmp_path):
    folder = _copy("openbookqa_tsv", tmp_path)
    for path in (folder / "Main").glob("*.tsv"):
        lines = path.read_text().splitlines()
        # keep Question ID, Question Stem, Complete Question, Answer Key
        cut = ["\t".join(c for i, c in enumerate(line.split("\t")) if i != 2) for line in lines]
        path.write_text("\n".join(cut) + "\n")
    assert load_openbookqa(folder).items == get_task("openbookqa", FIXTURES).items


@pytest.mark.parametrize("layout", [".", "Data/Main", "OpenBookQA-V1-Sep2018/Data/Main"])
def test_openbookqa_release_layouts(tmp_path, layout):
    folder = tmp_path / "openbookqa"
    shutil.copytree(FIXTURES / "openbookqa" / "Main", folder / layout)
    assert len(load_openbookqa(folder).items) == 4


def test_openbookqa_labels_out_of_order_keep_the_file_order(tmp_path):
    folder = tmp_path / "obqa"
    folder.mkdir()
    row = {
        "id": "1",
        "question": {
            "stem": "What do cows eat?",
            "choices": [
                {"text": "grass", "label": "C"},
                {"text": "stones", "label": "B"},
                {"text": "metal", "label": "A"},
            ],
        },
        "answerKey": "C",
    }
    (folder / "test.jsonl").write_text(json.dumps(row) + "\n")
    item = load_openbookqa(folder).items[0]
    assert item.targets == ("grass", "stones", "metal") and item.label == 0


def _obqa_jsonl(tmp_path: Path, row: dict) -> Path:
    folder = tmp_path / "tasks" / "openbookqa"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text(json.dumps(row) + "\n")
    return folder


GOOD_OBQA = {
    "id": "1",
    "question": {
        "stem": "Ice in a warm room will",
        "choices": [{"text": "melt", "label": "A"}, {"text": "grow", "label": "B"}],
    },
    "answerKey": "A",
}


@pytest.mark.parametrize(
    "row, field, why",
    [
        ({**GOOD_OBQA, "answerKey": "E"}, '"answerKey"', "not one of the choice labels"),
        ({**GOOD_OBQA, "question": "Ice will"}, '"question"', "expected an object"),
        (
            {**GOOD_OBQA, "question": {"choices": GOOD_OBQA["question"]["choices"]}},
            '"question.stem"',
            "missing",
        ),
        (
            {**GOOD_OBQA, "question": {"stem": "x", "choices": [{"text": "a", "label": "A"}]}},
            '"question.choices"',
            "at least 2",
        ),
    ],
    ids=["key-not-a-label", "question-string", "no-stem", "one-choice"],
)
def test_openbookqa_jsonl_wrong_schema(tmp_path, row, field, why):
    folder = _obqa_jsonl(tmp_path, row)
    _one_line_error(lambda: load_openbookqa(folder), "test.jsonl line 1", field, why)


def test_openbookqa_tsv_wrong_schema(tmp_path):
    folder = tmp_path / "obqa"
    folder.mkdir()
    path = folder / "test.tsv"
    path.write_text("id\tquestion\tanswer\n1\tIce will\tA\n")
    _one_line_error(lambda: load_openbookqa(folder), str(path), "line 1", "Question Stem")
    path.write_text("Question Stem\tChoices\tAnswer Key\nIce will\tmelt or grow\tA\n")
    _one_line_error(lambda: load_openbookqa(folder), "line 2", '"Choices"', "(A)")
    path.write_text("Question Stem\tChoices\tAnswer Key\nIce will\t(A) melt (B) grow\tC\n")
    _one_line_error(lambda: load_openbookqa(folder), "line 2", '"Answer Key"', "'C'")


# --- MNLI ------------------------------------------------------------------------------------


def test_mnli_matched_and_mismatched_splits():
    task = get_task("mnli", FIXTURES)
    assert (task.split, len(task.items), len(task.train_items)) == ("dev_matched", 6, 16)
    assert list(task.extra_splits) == ["dev_mismatched"]
    assert len(task.extra_splits["dev_mismatched"]) == 6
    assert task.finetune == "classify"
    assert task.class_names == ["entailment", "neutral", "contradiction"]
    assert [it.label for it in task.items] == [0, 2, 1, 0, 2, 1]  # e, c, n per premise
    assert task.items[0].candidates() == [
        (
            "A cat sat in the window watching birds.\nQuestion: An animal was looking outside."
            " True, False or Neither?\nAnswer:",
            f" {answer}",
        )
        for answer in ("True", "Neither", "False")
    ]
    other = get_task("mnli_mismatched", FIXTURES)
    assert other.split == "dev_mismatched" and other.extra_splits == {}
    assert other.items == task.extra_splits["dev_mismatched"]
    assert other.items[0].contexts[0].startswith("Dear editor, the bridge repairs")


def _mnli_folder(tmp_path: Path) -> Path:
    return _copy("glue_mnli", tmp_path)


def test_mnli_adds_a_period_and_skips_rows_without_a_majority(tmp_path):
    folder = _mnli_folder(tmp_path)
    path = folder / "dev_matched.tsv"
    lines = path.read_text().splitlines()
    cells = lines[1].split("\t")
    cells[9] = "An animal looked outside"  # sentence2 without its period
    no_majority = lines[2].split("\t")
    no_majority[-1] = "-"
    path.write_text("\n".join([lines[0], "\t".join(cells), "\t".join(no_majority)]) + "\n")
    items = load_mnli(folder).items
    assert len(items) == 1
    assert "Question: An animal looked outside. True, False or Neither?" in items[0].contexts[0]


def test_mnli_without_mismatched_file(tmp_path):
    folder = _mnli_folder(tmp_path)
    (folder / "dev_mismatched.tsv").unlink()
    assert load_mnli(folder).extra_splits == {}
    _one_line_error(lambda: load_mnli_mismatched(folder), "dev_mismatched.tsv not found")


@pytest.mark.parametrize(
    "edit, patterns",
    [
        (lambda c: c[:-1] + ["maybe"], ['"gold_label"', "expected one of"]),
        (lambda c: c[:8], ["expected 16 tab-separated columns, got 8"]),
    ],
    ids=["unknown-label", "short-row"],
)
def test_mnli_wrong_rows(tmp_path, edit, patterns):
    folder = _mnli_folder(tmp_path)
    path = folder / "dev_matched.tsv"
    lines = path.read_text().splitlines()
    lines[3] = "\t".join(edit(lines[3].split("\t")))
    path.write_text("\n".join(lines) + "\n")
    _one_line_error(lambda: load_mnli(folder), str(path), "line 4", *patterns)


def test_mnli_wrong_header(tmp_path):
    folder = _mnli_folder(tmp_path)
    path = folder / "train.tsv"
    path.write_text(path.read_text().replace("gold_label", "label", 1))
    _one_line_error(lambda: load_mnli(folder), str(path), "line 1", "gold_label")


# --- CLI: wrong files exit 2 with one line -----------------------------------------------------


def _bad_task_dirs(tmp_path: Path) -> dict[str, Path]:
    """One tasks folder per case, each holding one task in a wrong schema."""
    cases = {}
    root = tmp_path / "record_bad"
    (root / "superglue_record").mkdir(parents=True)
    (root / "superglue_record" / "val.jsonl").write_text(
        json.dumps({"passage": "text", "qas": []}) + "\n"
    )
    cases["record"] = root
    root = tmp_path / "obqa_bad"
    (root / "openbookqa").mkdir(parents=True)
    (root / "openbookqa" / "test.jsonl").write_text(json.dumps({**GOOD_OBQA, "answerKey": 3}))
    cases["openbookqa"] = root
    root = tmp_path / "mnli_bad"
    shutil.copytree(FIXTURES / "glue_mnli", root / "glue_mnli")
    path = root / "glue_mnli" / "dev_mismatched.tsv"
    path.write_text(path.read_text().replace("entailment", "yes"))
    cases["mnli"] = root
    return cases


@pytest.mark.slow
def test_cli_refuses_wrong_task_files_with_one_line(eval_run, tmp_path, capsys):
    run = eval_run
    bad = _bad_task_dirs(tmp_path)
    expect_user_error(
        capsys,
        ["eval", run, "--task", "record", "--tasks-dir", bad["record"]],
        watch=[run / "eval"],
        match=[r"val\.jsonl line 1", r'field "passage"'],
    )
    expect_user_error(
        capsys,
        ["eval", run, "--task", "openbookqa", "--tasks-dir", bad["openbookqa"], "--shots", "0"],
        match=[r"test\.jsonl line 1", r'field "answerKey"', r"expected a string"],
    )
    expect_user_error(
        capsys,
        ["finetune", run, "--task", "mnli", "--tasks-dir", bad["mnli"]],
        watch=[run / "eval"],
        match=[r"dev_mismatched\.tsv line 2", r"gold_label"],
    )
    expect_user_error(
        capsys,
        ["eval", run, "--task", "record", "--tasks-dir", tmp_path],
        match=[r"record", r"superglue_record", r"--tasks-dir"],
    )
    expect_user_error(
        capsys,
        ["finetune", run, "--task", "record", "--tasks-dir", FIXTURES],
        match=[r"not a fine-tuning task", r"zero-shot"],
    )


# --- end to end on a tiny trained model --------------------------------------------------------


@pytest.mark.slow
def test_new_tasks_scored_end_to_end_on_a_trained_model(eval_run, tmp_path, capsys):
    """ReCoRD zero-shot and OpenBookQA few-shot through the evaluator (scores checked against
    a direct forward pass, accuracy against the alias rule), MNLI fine-tuned through the CLI
    with both dev splits reported."""
    from moelab.data.tokenizer import eot_token_id
    from moelab.eval.priming import evaluate_task
    from moelab.eval.runs import open_run
    from moelab.eval.scoring import encode_pair
    from moelab.eval.tokens import make_encode

    run_dir = eval_run
    run = open_run(run_dir)
    model, tok = run.model, run.tokenizer
    encode, eot = make_encode(tok), eot_token_id(tok, default=0)
    max_len = model.cfg.max_seq_len

    record = get_task("record", FIXTURES)
    res = evaluate_task(model, tok, record, shots=0, keep_scores=True, bootstrap=50)
    assert res["n_items"] == 5 and res["chance"] == pytest.approx(record.chance)
    assert res["primary_mode"] == record.primary_mode == "mean"
    scores = res["scores"][0]
    for mode, metric in res["metrics"].items():
        hits = [it.is_correct(int(np.argmax(s[mode]))) for it, s in zip(record.items, scores)]
        assert metric["mean"] == pytest.approx(np.mean(hits)), mode
    # every candidate's summed log-prob equals one unbatched forward pass of the same tokens
    # (left-truncated to the model's context as the scorer does)
    for item, item_scores in zip(record.items[:2], scores[:2]):
        for j, (ctx, cont) in enumerate(item.candidates()):
            ctx_ids, cont_ids = encode_pair(encode, ctx, cont, eot)
            window = list(ctx_ids + cont_ids)[-(max_len + 1) :]
            direct = hand_logprobs(model, window[: -len(cont_ids)], list(cont_ids))
            assert item_scores["sum"][j] == pytest.approx(sum(direct), abs=1e-3)

    obqa = get_task("openbookqa", FIXTURES)
    res = evaluate_task(model, tok, obqa, shots=2, seeds=2, bootstrap=50)
    assert res["shots"] == 2 and res["seeds"] == [0, 1] and res["shots_from"] == "train"
    assert res["n_items"] == 4 and res["chance"] == 0.25
    assert res["primary_mode"] == "calibrated"
    assert res["accuracy"] == res["metrics"]["calibrated"]["mean"]

    code, out, err = run_cli(
        capsys,
        [
            "finetune",
            run_dir,
            "--task",
            "mnli",
            "--tasks-dir",
            FIXTURES,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--lrs",
            "1e-3",
        ],
    )
    assert code == 0, err
    assert "dev_mismatched: accuracy" in out and "(6 items, same model)" in out
    result = json.loads((run_dir / "eval" / "finetune-mnli.json").read_text())
    assert result["head"] == "classify" and result["split"] == "dev_matched"
    assert result["n_train"] == 14 and result["n_heldout"] == 2
    assert set(result["splits"]) == {"dev_matched", "dev_mismatched"}
    assert result["splits"]["dev_matched"]["accuracy"] == result["accuracy"]
    for split in result["splits"].values():
        assert split["n_items"] == 6 and 0.0 <= split["accuracy"] <= 1.0
        assert split["accuracy"] * 6 == pytest.approx(round(split["accuracy"] * 6))
    assert result["chance"] == pytest.approx(1 / 3)
