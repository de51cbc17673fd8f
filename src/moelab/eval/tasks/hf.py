"""Official splits from the Hugging Face hub: ``--task hf:piqa``, a converter per dataset schema.

Datasets, splits, fields and labels: docs/evaluation.md, "Official splits from the Hugging
Face hub".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from moelab.errors import MoelabError
from moelab.eval.tasks import classification, mnli, openbookqa, paper, record
from moelab.eval.tasks.blimp import load_hub_blimp
from moelab.eval.tasks.files import HUB_PREFIX, HubRow, Row, hub_split
from moelab.eval.tasks.items import Item, Task

Converter = Callable[[Mapping[str, Any], str], Item]


def _row(record: Mapping[str, Any], where: str) -> Row:
    return HubRow(where, dict(record))


def _via(parse: Callable[[Row], Item], name: str) -> Converter:
    """A converter that reads the record with the local loader's own row parser."""

    def convert(record: Mapping[str, Any], where: str = name) -> Item:
        return parse(_row(record, where))

    return convert


hellaswag_item = _via(paper._hellaswag_row, "hellaswag")
winogrande_item = _via(paper._winogrande_row, "winogrande")
copa_item = _via(paper._copa_row, "copa")
boolq_item = _via(classification._boolq_row, "boolq")
lambada_item = _via(paper._lambada_row, "lambada")


def piqa_item(record: Mapping[str, Any], where: str = "piqa") -> Item:
    # The hub puts the label in the record; the original release keeps it in a .lst file.
    row = _row(record, where)
    label = row.label_in_range("label", row.int("label"), 2)
    return Item((row.str("goal"),), (row.str("sol1"), row.str("sol2")), label)


def record_item(row_data: Mapping[str, Any], where: str = "record") -> Item:
    # The hub already gives the entity strings and answer texts (not spans), one row per query.
    row = _row(row_data, where)
    entities = row.str_list("entities", min_len=0)
    answers = row.str_list("answers", min_len=0)
    return record.build_item(row, row.str("passage"), row.str("query"), entities, answers)


def openbookqa_item(row_data: Mapping[str, Any], where: str = "openbookqa") -> Item:
    row = _row(row_data, where)
    choices = row.obj("choices")
    texts, labels = choices.str_list("text", min_len=2), choices.str_list("label", min_len=2)
    if len(texts) != len(labels):
        raise choices.error("label", f"{len(labels)} labels for {len(texts)} choice texts")
    labels = [lab.strip() for lab in labels]
    return openbookqa._item(
        row, row.str("question_stem"), "question_stem", texts, labels, "answerKey"
    )


def mnli_item(row_data: Mapping[str, Any], where: str = "mnli") -> Item:
    row = _row(row_data, where)
    label = row.choice("label", [(i, i) for i in range(len(mnli.CLASSES))])
    return mnli.make_item(row, "premise", "hypothesis", label)


@dataclass(frozen=True)
class HubTask:
    name: str
    dataset: str
    config: str | None
    split: str  # evaluated
    train_split: str | None  # shots / fine-tuning
    convert: Converter
    kind: str = "choice"
    finetune: str | None = "choice"
    class_names: tuple[str, ...] = ()
    extra_splits: tuple[str, ...] = ()  # further labelled splits scored by fine-tuning
    primary_mode: str | None = None  # as the local loader's Task.primary_mode


HUB_TASKS: dict[str, HubTask] = {
    t.name: t
    for t in [
        HubTask("hellaswag", "Rowan/hellaswag", None, "validation", "train", hellaswag_item),
        HubTask("piqa", "baber/piqa", None, "validation", "train", piqa_item),
        HubTask(
            "winogrande",
            "allenai/winogrande",
            "winogrande_xl",
            "validation",
            "train",
            winogrande_item,
        ),  # fmt: skip
        HubTask("copa", "aps/super_glue", "copa", "validation", "train", copa_item),
        HubTask(
            "boolq",
            "aps/super_glue",
            "boolq",
            "validation",
            "train",
            boolq_item,
            finetune="classify",
            class_names=("no", "yes"),
        ),  # fmt: skip
        HubTask(
            "lambada",
            "EleutherAI/lambada_openai",
            "default",
            "test",
            None,
            lambada_item,
            kind="last_word",
            finetune=None,
        ),  # fmt: skip
        HubTask(
            "record",
            "aps/super_glue",
            "record",
            "validation",
            None,
            record_item,
            finetune=None,
            primary_mode=record.PRIMARY_MODE,
        ),  # fmt: skip
        HubTask(
            "openbookqa",
            "allenai/openbookqa",
            "main",
            "test",
            "train",
            openbookqa_item,
            primary_mode=openbookqa.PRIMARY_MODE,
        ),  # fmt: skip
        HubTask(
            "mnli",
            "nyu-mll/glue",
            "mnli",
            "validation_matched",
            "train",
            mnli_item,
            finetune="classify",
            class_names=tuple(mnli.CLASSES),
            extra_splits=("validation_mismatched",),
            primary_mode=mnli.PRIMARY_MODE,
        ),  # fmt: skip
    ]
}
# the same dataset, evaluated on the mismatched split alone
HUB_TASKS["mnli_mismatched"] = replace(
    HUB_TASKS["mnli"], name="mnli_mismatched", split="validation_mismatched", extra_splits=()
)


def convert_records(spec: HubTask, split: str, records) -> list[Item]:
    where = f"{HUB_PREFIX}{spec.dataset}"
    return [spec.convert(r, f"{where} {split} row {i}") for i, r in enumerate(records)]


def _load_split(spec: HubTask, split: str) -> list[dict[str, Any]]:
    source = f"{spec.dataset}, {spec.config}" if spec.config else spec.dataset
    task = HUB_PREFIX + spec.name
    return list(hub_split(task, spec.dataset, spec.config, split, source, "the task's local files"))


def load_hub_task(name: str) -> Task:
    """``hf:piqa`` -> the task read from its official hub splits."""
    key = name.removeprefix(HUB_PREFIX)
    if key.partition(":")[0] == "blimp":  # one hub config per paradigm: tasks/blimp.py
        return load_hub_blimp(key.partition(":")[2])
    spec = HUB_TASKS.get(key)
    if spec is None:
        extra = ""
        if key == "storycloze":
            extra = " (StoryCloze has no public hub copy: use its local CSVs)"
        raise MoelabError(
            f"task {name!r}: no official hub split known{extra}; supported: "
            + ", ".join(HUB_PREFIX + n for n in HUB_TASKS)
        )
    items = convert_records(spec, spec.split, _load_split(spec, spec.split))
    train = None
    if spec.train_split is not None:
        train = convert_records(spec, spec.train_split, _load_split(spec, spec.train_split))
    extra = {s: convert_records(spec, s, _load_split(spec, s)) for s in spec.extra_splits}
    where = f"{HUB_PREFIX}{spec.dataset}" + (f":{spec.config}" if spec.config else "")
    return Task(
        spec.name,
        spec.kind,
        items,
        spec.split,
        train,
        spec.train_split,
        finetune=spec.finetune,
        class_names=list(spec.class_names),
        sources=[f"{where} {s}" for s in (spec.split, *spec.extra_splits, spec.train_split) if s],
        extra_splits=extra,
        primary_mode=spec.primary_mode,
    )
