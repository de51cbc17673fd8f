"""OpenBookQA: elementary science questions with 4 answers, few-shot in the paper.

Folders, JSONL/TSV formats, splits and template: docs/evaluation.md, "ReCoRD, OpenBookQA and MNLI".
"""

from __future__ import annotations

import re
from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import Row, first_file, read_jsonl, read_tsv
from moelab.eval.tasks.items import Item, Task

# GPT-3 (Brown et al. 2020) sec. 2.4 scores OpenBookQA (with ARC and RACE) by
# P(completion | context) / P(completion | "Answer: "): moelab's "calibrated" mode.
PRIMARY_MODE = "calibrated"
LAYOUTS = (".", "Main", "Data/Main", "OpenBookQA-V1-Sep2018/Data/Main")


def _item(
    row: Row, stem: str, stem_field: str, texts: list[str], labels: list[str], key_field: str
) -> Item:
    if len(set(labels)) != len(labels):
        raise row.error(key_field, f"choice labels {labels} repeat a label")
    key = row.str(key_field).strip()
    if key not in labels:
        raise row.error(key_field, f"{key!r} is not one of the choice labels {labels}")
    if not stem.strip():
        raise row.error(stem_field, "the question stem is empty")
    return Item((stem.strip(),), tuple(t.strip() for t in texts), labels.index(key))


def jsonl_item(row: Row) -> Item:
    question = row.obj("question")
    choices = question.objs("choices", min_len=2)
    texts = [c.str("text") for c in choices]
    labels = [c.str("label").strip() for c in choices]
    return _item(row, question.str("stem"), "question.stem", texts, labels, "answerKey")


_MARK = "({})"


def split_choices(row: Row, field: str, text: str) -> tuple[str, list[str], list[str]]:
    """``"stem (A) x (B) y"`` -> (stem, ["x", "y"], ["A", "B"]); labels run A, B, C, ..."""
    start = text.find(_MARK.format("A"))
    if start < 0:
        raise row.error(field, f"no '(A)' choice marker in {text[:40]!r}")
    stem, rest, labels, texts = text[:start], text[start:], [], []
    letter = "A"
    while rest.startswith(_MARK.format(letter)):
        following = chr(ord(letter) + 1)
        nxt = re.search(re.escape(_MARK.format(following)), rest)
        end = nxt.start() if nxt else len(rest)
        texts.append(rest[len(_MARK.format(letter)) : end])
        labels.append(letter)
        rest, letter = rest[end:], following
    if len(texts) < 2 or any(not t.strip() for t in texts):
        raise row.error(
            field, f"expected at least 2 non-empty choices '(A) ... (B) ...' in {text!r}"
        )
    return stem, texts, labels


def _column(header: list[str], *names: str) -> str | None:
    def key(s: str) -> str:
        return re.sub(r"[\s_]", "", s).lower()

    found = {key(h): h for h in header}
    return next((found[key(n)] for n in names if key(n) in found), None)


def _tsv_columns(path: Path, header: list[str]) -> tuple[str, str, str]:
    """(stem, choices, answer key) column names of an OpenBookQA TSV header."""
    stem = _column(header, "Question Stem")
    choices = _column(header, "Choices") or _column(header, "Complete Question")
    key = _column(header, "Answer Key")
    for name, col in [("Question Stem", stem), ("Choices", choices), ("Answer Key", key)]:
        if col is None:
            raise MoelabError(
                f"{path} line 1: header lacks column {name!r} (has {header}); expected "
                "OpenBookQA's Question Stem, Choices (or Complete Question), Answer Key"
            )
    return stem, choices, key


def read_tsv_split(path: Path) -> list[Item]:
    items, columns = [], None
    for row in read_tsv(path):
        if columns is None:
            columns = _tsv_columns(path, list(row.data))
        stem_col, choices_col, key_col = columns
        _, texts, labels = split_choices(row, choices_col, row.str(choices_col))
        items.append(_item(row, row.str(stem_col), stem_col, texts, labels, key_col))
    return items


def _find(folder: Path, split: str) -> Path | None:
    return first_file(folder, [f"{d}/{split}.{ext}" for d in LAYOUTS for ext in ("jsonl", "tsv")])


def read_split(path: Path) -> list[Item]:
    if path.suffix == ".tsv":
        items = read_tsv_split(path)
    else:
        items = [jsonl_item(r) for r in read_jsonl(path)]
    if not items:
        raise MoelabError(f"{path}: no questions")
    return items


def load_openbookqa(folder: Path) -> Task:
    test = _find(folder, "test")
    if test is None:
        raise MoelabError(
            f"openbookqa: no test.jsonl or test.tsv in {folder} (or its Main/, Data/Main/); "
            "point {key} at the folder holding openbookqa/",
            key="tasks_dir",
        )
    train = _find(folder, "train")
    return Task(
        "openbookqa",
        "choice",
        read_split(test),
        "test",
        read_split(train) if train else None,
        "train" if train else None,
        finetune="choice",
        sources=[str(p) for p in (test, train) if p is not None],
        primary_mode=PRIMARY_MODE,
    )
