"""Loaders for the classification tasks (fine-tuning and priming): BoolQ, SST-2, RTE, CB, MRPC.

Priming scores each class's answer word after the prompt; fine-tuning reads the prompt's last
token. Templates: docs/evaluation.md, "Tasks and where they are read from".
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from moelab.eval.tasks.files import Row, read_tsv, split_task
from moelab.eval.tasks.items import Item, Task


def _boolq_row(row: Row) -> Item:
    label = row.choice("label", [(True, 1), (False, 0), ("true", 1), ("false", 0), (1, 1), (0, 0)])
    question = row.str("question").strip()
    prompt = f"{row.str('passage').strip()}\nQuestion: {question}?\nAnswer:"
    return Item((prompt,), ("no", "yes"), label)


def load_boolq(folder: Path) -> Task:
    return split_task(
        "boolq",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        _boolq_row,
        "val",
        finetune="classify",
        class_names=["no", "yes"],
    )


def _sst2_row(row: Row) -> Item:
    label = row.choice("label", [("0", 0), ("1", 1), (0, 0), (1, 1)])
    prompt = f"{row.str('sentence').strip()}\nQuestion: Is this sentence positive or negative?"
    return Item((prompt + "\nAnswer:",), ("negative", "positive"), label)


def load_sst2(folder: Path) -> Task:
    return split_task(
        "sst2",
        folder,
        ["dev.tsv"],
        ["train_full.tsv", "train.tsv"],
        _sst2_row,
        "dev",
        finetune="classify",
        class_names=["negative", "positive"],
        reader=partial(read_tsv, fields=["sentence", "label"]),
    )


_RTE = {"entailment": 0, "not_entailment": 1}
_CB = {"entailment": 0, "contradiction": 1, "neutral": 2}


def _rte_row(row: Row) -> Item:
    label = row.choice("label", list(_RTE.items()))
    hyp = row.str("hypothesis").strip()
    prompt = f"{row.str('premise').strip()}\nQuestion: {hyp} True or False?\nAnswer:"
    return Item((prompt,), ("True", "False"), label)


def _cb_row(row: Row) -> Item:
    label = row.choice("label", list(_CB.items()))
    hyp = row.str("hypothesis").strip()
    if hyp and hyp[-1] not in ".?!":
        hyp += "."
    prompt = f"{row.str('premise').strip()}\nQuestion: {hyp} True, False, or Neither?\nAnswer:"
    return Item((prompt,), ("True", "False", "Neither"), label)


def load_rte(folder: Path) -> Task:
    return split_task(
        "rte",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        _rte_row,
        "val",
        finetune="classify",
        class_names=["entailment", "not_entailment"],
    )


def load_cb(folder: Path) -> Task:
    return split_task(
        "cb",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        _cb_row,
        "val",
        finetune="classify",
        class_names=["entailment", "contradiction", "neutral"],
    )


_MRPC_FIELDS = ["Quality", "#1 String", "#2 String"]


def _mrpc_row(row: Row) -> Item:
    label = row.choice("Quality", [("0", 0), ("1", 1)])
    prompt = (
        f"Sentence 1: {row.str('#1 String').strip()}\nSentence 2: {row.str('#2 String').strip()}"
        "\nQuestion: Do both sentences mean the same thing?\nAnswer:"
    )
    return Item((prompt,), ("no", "yes"), label)


def load_mrpc(folder: Path) -> Task:
    """GLUE's MRPC dev set is a slice of msr_paraphrase_train; the staged data has the full
    train file and the labelled test file, so the test file is the evaluated split here."""
    return split_task(
        "mrpc",
        folder,
        ["msr_paraphrase_test.txt"],
        ["msr_paraphrase_train.txt"],
        _mrpc_row,
        "test",
        finetune="classify",
        class_names=["not_paraphrase", "paraphrase"],
        reader=partial(read_tsv, fields=_MRPC_FIELDS),
    )
