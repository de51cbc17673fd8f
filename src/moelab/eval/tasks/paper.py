"""Loaders for the paper's priming tasks; each takes the task's folder and reads both the staged
and the official format. Templates: docs/evaluation.md, "Tasks and where they are read from".
"""

from __future__ import annotations

import re
from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import (
    Row,
    first_file,
    need_file,
    read_csv,
    read_jsonl,
    read_lines,
    split_task,
)
from moelab.eval.tasks.items import Item, Task

# --- HellaSwag ---------------------------------------------------------------------------------

_WIKIHOW_MARKER = re.compile(r"\[[a-z]+\]")


def _clean_hellaswag(text: str) -> str:
    # The official jsonl keeps WikiHow markers ("[header]", "[step]"); the staged text has them
    # removed already. Dropping them and doubled spaces makes both formats read the same way.
    text = text.replace(" [title]", ". ")
    text = _WIKIHOW_MARKER.sub("", text)
    return re.sub(r"  +", " ", text).strip()


def _hellaswag_text(path: Path) -> list[Item]:
    """klosax's text form: 6 lines per item (context, gold 0-3, four endings)."""
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise MoelabError(f"{path}: expected 6 lines per item, got {len(lines)} lines")
    items = []
    for start in range(0, len(lines), 6):
        gold = lines[start + 1].strip()
        if gold not in {"0", "1", "2", "3"}:
            raise MoelabError(f'{path} line {start + 2}: field "label": expected 0-3, got {gold!r}')
        endings = tuple(e.strip() for e in lines[start + 2 : start + 6])
        items.append(Item((lines[start].strip(),), endings, int(gold)))
    return items


def _hellaswag_row(row: Row) -> Item:
    ctx = row.str("activity_label") + ": " + row.str("ctx_a") + " " + row.str("ctx_b")
    endings = row.str_list("endings", min_len=2)
    label = row.label_in_range("label", row.int("label"), len(endings))
    return Item((_clean_hellaswag(ctx),), tuple(_clean_hellaswag(e) for e in endings), label)


def load_hellaswag(folder: Path) -> Task:
    official = first_file(folder, ["hellaswag_val.jsonl"])
    if official is not None:
        items = [_hellaswag_row(r) for r in read_jsonl(official)]
        sources = [official]
    else:
        path = need_file(
            folder, ["hellaswag_val_full.txt.bz2", "hellaswag_val_full.txt"], "hellaswag"
        )
        items, sources = _hellaswag_text(path), [path]
    train = first_file(folder, ["hellaswag_train.jsonl"])
    train_items = [_hellaswag_row(r) for r in read_jsonl(train)] if train else None
    return Task(
        "hellaswag",
        "choice",
        items,
        "val",
        train_items,
        "train" if train else None,
        finetune="choice",
        sources=[str(p) for p in sources + ([train] if train else [])],
    )


# --- PIQA ---------------------------------------------------------------------------------------


def _piqa_split(jsonl: Path, labels: Path) -> list[Item]:
    label_lines = [x.strip() for x in read_lines(labels) if x.strip()]
    rows = list(read_jsonl(jsonl))
    if len(rows) != len(label_lines):
        raise MoelabError(f"{labels}: {len(label_lines)} labels for {len(rows)} items in {jsonl}")
    items = []
    for row, lab in zip(rows, label_lines):
        if lab not in {"0", "1"}:
            raise MoelabError(f"{labels}: label for line {row.line} must be 0 or 1, got {lab!r}")
        items.append(Item((row.str("goal"),), (row.str("sol1"), row.str("sol2")), int(lab)))
    return items


def load_piqa(folder: Path) -> Task:
    valid = need_file(folder, ["valid.jsonl"], "piqa")
    items = _piqa_split(valid, need_file(folder, ["valid-labels.lst"], "piqa labels"))
    train, train_labels = folder / "train.jsonl", folder / "train-labels.lst"
    has_train = train.is_file() and train_labels.is_file()
    return Task(
        "piqa",
        "choice",
        items,
        "valid",
        _piqa_split(train, train_labels) if has_train else None,
        "train" if has_train else None,
        finetune="choice",
        sources=[str(valid)] + ([str(train)] if has_train else []),
    )


# --- WinoGrande ---------------------------------------------------------------------------------


def _winogrande_row(row: Row) -> Item:
    if row.has("context_options"):  # llm-foundry's partial-scoring form
        contexts = row.str_list("context_options", min_len=2)
        rest = row.str("continuation").strip()
        label = row.label_in_range("gold", row.int("gold"), len(contexts))
        return Item(tuple(c.rstrip() for c in contexts), (rest,), label)
    sentence = row.str("sentence")  # official: "_" marks the blank, answer "1" or "2"
    if "_" not in sentence:
        raise row.error("sentence", "has no '_' blank to fill")
    blank = sentence.index("_")
    options = (row.str("option1"), row.str("option2"))
    label = row.label_in_range("answer", row.int("answer") - 1, 2)
    contexts = tuple(sentence[:blank] + opt for opt in options)
    return Item(contexts, (sentence[blank + 1 :].strip(),), label)


def load_winogrande(folder: Path) -> Task:
    return split_task(
        "winogrande",
        folder,
        ["winogrande.jsonl", "dev.jsonl"],
        ["train_xl.jsonl", "train.jsonl"],
        _winogrande_row,
        "dev",
        what="winogrande",
        finetune="choice",
    )


# --- StoryCloze ---------------------------------------------------------------------------------

_STORY_FIELDS = [f"InputSentence{i}" for i in range(1, 5)] + [
    "RandomFifthSentenceQuiz1",
    "RandomFifthSentenceQuiz2",
    "AnswerRightEnding",
]


def _storycloze_split(path: Path) -> list[Item]:
    items = []
    for row in read_csv(path, _STORY_FIELDS):
        story = " ".join(row.str(f"InputSentence{i}").strip() for i in range(1, 5))
        endings = (row.str("RandomFifthSentenceQuiz1"), row.str("RandomFifthSentenceQuiz2"))
        label = row.label_in_range("AnswerRightEnding", row.int("AnswerRightEnding") - 1, 2)
        items.append(Item((story,), tuple(e.strip() for e in endings), label))
    return items


def load_storycloze(folder: Path) -> Task:
    """Evaluated on the 2016 test set; shots (and fine-tuning data) come from the 2016 validation
    set, the only labelled stories with two endings (the ROCStories training set has none)."""
    test = need_file(folder, [n for n in _story_names(folder) if "test" in n], "storycloze test")
    val = need_file(folder, [n for n in _story_names(folder) if "val" in n], "storycloze val")
    return Task(
        "storycloze",
        "choice",
        _storycloze_split(test),
        "test",
        _storycloze_split(val),
        "val",
        finetune="choice",
        sources=[str(test), str(val)],
    )


def _story_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.glob("*.csv")) if folder.is_dir() else []
    return names or ["cloze_test_test__spring2016.csv", "cloze_test_val__spring2016.csv"]


# --- COPA ---------------------------------------------------------------------------------------

_CONNECTOR = {"cause": "because", "effect": "therefore"}


def _copa_row(row: Row) -> Item:
    question = row.str("question")
    if question not in _CONNECTOR:
        raise row.error("question", f"expected 'cause' or 'effect', got {question!r}")
    premise = row.str("premise").strip()
    if premise.endswith("."):
        premise = premise[:-1]
    choices = tuple(c[:1].lower() + c[1:] for c in (row.str("choice1"), row.str("choice2")))
    label = row.label_in_range("label", row.int("label"), 2)
    return Item((f"{premise} {_CONNECTOR[question]}",), choices, label)


def load_copa(folder: Path) -> Task:
    return split_task(
        "copa",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        _copa_row,
        "val",
        what="copa",
        finetune="choice",
    )


# --- LAMBADA ------------------------------------------------------------------------------------


def _lambada_row(row: Row) -> Item:
    if row.has("continuation"):  # llm-foundry: passage without the last word + the word
        context, word = row.str("context").rstrip(), row.str("continuation").strip()
    else:  # the harness's lambada_openai: {"text": passage}, split at the last space
        text = row.str("text")
        if " " not in text.strip():
            raise row.error("text", "has no space to split the last word off")
        context, word = text.rstrip().rsplit(" ", 1)
    if not word:
        raise row.error("continuation", "the last word is empty")
    return Item((context,), (word,), 0)


def load_lambada(folder: Path) -> Task:
    names = ["lambada_openai.jsonl", "lambada_test.jsonl"]
    return split_task(
        "lambada", folder, names, [], _lambada_row, "test", what="lambada", kind="last_word"
    )
