"""MNLI (GLUE): 3-way entailment, matched (``mnli``) and mismatched (``mnli_mismatched``).

Files, skipped rows, template and the two dev sets: docs/evaluation.md, "ReCoRD, OpenBookQA
and MNLI".
"""

from __future__ import annotations

from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import Row, read_tsv
from moelab.eval.tasks.items import Item, Task

CLASSES = ["entailment", "neutral", "contradiction"]
ANSWERS = ("True", "Neither", "False")
PRIMARY_MODE = "mean"  # GPT-3 sec. 2.4 default; the answers are one token each, so mean = sum
NO_MAJORITY = "-"
_FIELDS = ["sentence1", "sentence2", "gold_label"]


def prompt(premise: str, hypothesis: str) -> str:
    hyp = hypothesis.strip()
    if not hyp.endswith("."):
        hyp += "."
    return f"{premise.strip()}\nQuestion: {hyp} True, False or Neither?\nAnswer:"


def make_item(row: Row, premise_field: str, hypothesis_field: str, label: int) -> Item:
    return Item((prompt(row.str(premise_field), row.str(hypothesis_field)),), ANSWERS, label)


def read_split(path: Path) -> list[Item]:
    items = []
    for row in read_tsv(path, _FIELDS):
        if row.str("gold_label").strip() == NO_MAJORITY:
            continue
        label = row.choice("gold_label", [(name, i) for i, name in enumerate(CLASSES)])
        items.append(make_item(row, "sentence1", "sentence2", label))
    if not items:
        raise MoelabError(f"{path}: no labelled pairs (expected GLUE's MNLI TSV with a header)")
    return items


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise MoelabError(
            f"mnli: {name} not found in {folder}; point {{key}} at the folder holding "
            "glue_mnli/ (GLUE's MNLI/ with train.tsv, dev_matched.tsv, dev_mismatched.tsv)",
            key="tasks_dir",
        )
    return path


def _load(folder: Path, name: str, evaluated: str, others: list[str]) -> Task:
    path = _need(folder, f"{evaluated}.tsv")
    extra = {s: read_split(folder / f"{s}.tsv") for s in others if (folder / f"{s}.tsv").is_file()}
    train = folder / "train.tsv"
    has_train = train.is_file()
    return Task(
        name,
        "choice",
        read_split(path),
        evaluated,
        read_split(train) if has_train else None,
        "train" if has_train else None,
        finetune="classify",
        class_names=list(CLASSES),
        sources=[str(path)]
        + [str(folder / f"{s}.tsv") for s in extra]
        + ([str(train)] if has_train else []),
        extra_splits=extra,
        primary_mode=PRIMARY_MODE,
    )


def load_mnli(folder: Path) -> Task:
    return _load(folder, "mnli", "dev_matched", ["dev_mismatched"])


def load_mnli_mismatched(folder: Path) -> Task:
    return _load(folder, "mnli_mismatched", "dev_mismatched", [])
