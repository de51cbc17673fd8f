"""Loaders for the classification tasks (fine-tuning and priming): BoolQ, SST-2, RTE, CB, MRPC.

For priming, each class is a candidate answer word after a question template (the usual GPT-3 /
lm-evaluation-harness style); for fine-tuning, the same prompt without an answer is the input
and a classification head reads the last token. Templates:

- BoolQ: ``passage + "\\nQuestion: " + question + "?\\nAnswer:"`` -> ``" no"`` / ``" yes"``
- SST-2: ``sentence + "\\nQuestion: Is this sentence positive or negative?\\nAnswer:"``
  -> ``" negative"`` / ``" positive"``
- RTE: ``premise + "\\nQuestion: " + hypothesis + " True or False?\\nAnswer:"`` -> True / False
- CB: ``premise + "\\nQuestion: " + hypothesis + " True, False, or Neither?\\nAnswer:"``
- MRPC: ``"Sentence 1: " + s1 + "\\nSentence 2: " + s2 + "\\nQuestion: Do both sentences mean
  the same thing?\\nAnswer:"`` -> no / yes
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import Row, read_jsonl, read_tsv
from moelab.eval.tasks.items import Item, Task


def _split(
    folder: Path, names: list[str], reader: Callable[[Path], Iterable[Row]], parse, required: bool
) -> tuple[list[Item] | None, Path | None]:
    for name in names:
        path = folder / name
        if path.is_file():
            return [parse(row) for row in reader(path)], path
    if required:
        raise MoelabError(
            f"none of {', '.join(names)} in {folder}; point {{key}} at the folder holding "
            "the task folders or pass a JSONL file",
            key="tasks_dir",
        )
    return None, None


def _make(name, folder, eval_names, train_names, reader, parse, split, classes) -> Task:
    items, eval_path = _split(folder, eval_names, reader, parse, required=True)
    train_items, train_path = _split(folder, train_names, reader, parse, required=False)
    return Task(
        name,
        "choice",
        items,
        split,
        train_items,
        "train" if train_items else None,
        finetune="classify",
        class_names=classes,
        sources=[str(p) for p in (eval_path, train_path) if p is not None],
    )


def _boolq_row(row: Row) -> Item:
    label = row.choice("label", [(True, 1), (False, 0), ("true", 1), ("false", 0), (1, 1), (0, 0)])
    question = row.str("question").strip()
    prompt = f"{row.str('passage').strip()}\nQuestion: {question}?\nAnswer:"
    return Item((prompt,), ("no", "yes"), label)


def load_boolq(folder: Path) -> Task:
    return _make(
        "boolq",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        read_jsonl,
        _boolq_row,
        "val",
        ["no", "yes"],
    )


def _sst2_row(row: Row) -> Item:
    label = row.choice("label", [("0", 0), ("1", 1), (0, 0), (1, 1)])
    prompt = f"{row.str('sentence').strip()}\nQuestion: Is this sentence positive or negative?"
    return Item((prompt + "\nAnswer:",), ("negative", "positive"), label)


def load_sst2(folder: Path) -> Task:
    def tsv(path: Path):
        return read_tsv(path, ["sentence", "label"])

    return _make(
        "sst2",
        folder,
        ["dev.tsv"],
        ["train_full.tsv", "train.tsv"],
        tsv,
        _sst2_row,
        "dev",
        ["negative", "positive"],
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
    return _make(
        "rte",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        read_jsonl,
        _rte_row,
        "val",
        ["entailment", "not_entailment"],
    )


def load_cb(folder: Path) -> Task:
    return _make(
        "cb",
        folder,
        ["val.jsonl"],
        ["train.jsonl"],
        read_jsonl,
        _cb_row,
        "val",
        ["entailment", "contradiction", "neutral"],
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

    def tsv(path: Path):
        return read_tsv(path, _MRPC_FIELDS)

    return _make(
        "mrpc",
        folder,
        ["msr_paraphrase_test.txt"],
        ["msr_paraphrase_train.txt"],
        tsv,
        _mrpc_row,
        "test",
        ["not_paraphrase", "paraphrase"],
    )
