"""`--task hf:NAME`: converters from the official hub schemas, and the failure paths (no network
is used: the offline path is what this machine exercises)."""

from __future__ import annotations

import sys
import time

import pytest

from moelab.errors import MoelabError
from moelab.eval.tasks import get_task
from moelab.eval.tasks.hf import (
    HUB_TASKS,
    boolq_item,
    convert_records,
    copa_item,
    hellaswag_item,
    lambada_item,
    load_hub_task,
    mnli_item,
    openbookqa_item,
    piqa_item,
    record_item,
    winogrande_item,
)

# Records written by hand in each dataset's own schema (field names and value types as the hub
# serves them: HellaSwag labels and WinoGrande answers are strings, the others integers).
HELLASWAG = {
    "ind": 24,
    "activity_label": "Roof shingle removal",
    "ctx_a": "A man is sitting on a roof.",
    "ctx_b": "he",
    "ctx": "A man is sitting on a roof. he",
    "endings": [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ],
    "source_id": "activitynet~v_-JhWjGDPHMY",
    "split": "val",
    "split_type": "indomain",
    "label": "3",
}
PIQA = {"goal": "To dry a wet phone,", "sol1": "put it in rice.", "sol2": "boil it.", "label": 0}
WINOGRANDE = {
    "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
    "option1": "Sarah",
    "option2": "Maria",
    "answer": "1",
}
COPA = {
    "premise": "My body cast a shadow over the grass.",
    "choice1": "The sun was rising.",
    "choice2": "The grass was cut.",
    "question": "cause",
    "idx": 0,
    "label": 0,
}
BOOLQ = {
    "question": "is the sky blue",
    "passage": "The sky looks blue because air scatters blue light.",
    "idx": 3,
    "label": 1,
}
LAMBADA = {"text": "he handed her the keys and she started the car"}
# aps/super_glue config record: one row per query, entity strings and answer texts (no spans)
RECORD = {
    "passage": "Anna met Ben Cole in Oslo.\n@highlight\nAnna visited Oslo",
    "query": "@placeholder shook hands with Anna.",
    "entities": ["Anna", "Ben Cole", "Oslo", "Anna", "Cole"],
    "entity_spans": {"text": ["Anna"], "start": [0], "end": [4]},
    "answers": ["Ben Cole", "Cole"],
    "idx": {"passage": 0, "query": 0},
}
# allenai/openbookqa config main
OPENBOOKQA = {
    "id": "7-1",
    "question_stem": "A magnet will pick up",
    "choices": {
        "text": ["a paper clip", "a rubber band", "a glass bead", "a wool sock"],
        "label": ["A", "B", "C", "D"],
    },
    "answerKey": "A",
}
# nyu-mll/glue config mnli (label 0 entailment, 1 neutral, 2 contradiction)
MNLI = {
    "premise": "The shop sells bread every morning.",
    "hypothesis": "The shop never sells bread",
    "label": 2,
    "idx": 5,
}


def test_hellaswag_record():
    item = hellaswag_item(HELLASWAG)
    assert item.contexts == ("Roof shingle removal: A man is sitting on a roof. he",)
    assert item.targets == tuple(HELLASWAG["endings"])
    assert item.label == 3


def test_piqa_record():
    item = piqa_item(PIQA)
    assert item.contexts == ("To dry a wet phone,",)
    assert item.targets == ("put it in rice.", "boil it.")
    assert item.label == 0


def test_winogrande_record_is_partial_scoring():
    item = winogrande_item(WINOGRANDE)
    assert item.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert item.targets == ("always got the harder cases.",)
    assert item.label == 0  # answer "1" is the first option


def test_copa_record():
    item = copa_item(COPA)
    assert item.contexts == ("My body cast a shadow over the grass because",)
    assert item.targets == ("the sun was rising.", "the grass was cut.")
    assert item.label == 0
    effect = copa_item({**COPA, "question": "effect", "label": 1})
    assert effect.contexts == ("My body cast a shadow over the grass therefore",)
    assert effect.label == 1


def test_boolq_record():
    item = boolq_item(BOOLQ)
    assert item.contexts == (
        "The sky looks blue because air scatters blue light.\nQuestion: is the sky blue?\nAnswer:",
    )
    assert item.targets == ("no", "yes")
    assert item.label == 1


def test_lambada_record():
    item = lambada_item(LAMBADA)
    assert item.contexts == ("he handed her the keys and she started the",)
    assert item.targets == ("car",)


def test_record_hub_row_matches_the_local_loader():
    item = record_item(RECORD)
    assert item.contexts == ("Anna met Ben Cole in Oslo.\n\n  - Anna visited Oslo.\n",)
    # distinct entities, sorted; both answer aliases are right
    assert item.targets == tuple(
        f"  - {e} shook hands with Anna." for e in ["Anna", "Ben Cole", "Cole", "Oslo"]
    )
    assert item.delimiter == "" and item.correct == (1, 2) and item.label == 1


def test_record_hub_row_errors():
    with pytest.raises(MoelabError, match=r'hf:aps/super_glue validation row 3: field "answers"'):
        record_item({**RECORD, "answers": ["Carl"]}, "hf:aps/super_glue validation row 3")
    with pytest.raises(MoelabError, match=r"no gold answer"):
        record_item({**RECORD, "answers": []}, "hf:aps/super_glue test row 0")


def test_openbookqa_hub_row():
    item = openbookqa_item(OPENBOOKQA)
    assert item.candidates()[0] == ("A magnet will pick up", " a paper clip")
    assert item.n_candidates == 4 and item.label == 0
    assert openbookqa_item({**OPENBOOKQA, "answerKey": " D"}).label == 3
    with pytest.raises(MoelabError, match=r'field "answerKey": .E. is not one of'):
        openbookqa_item({**OPENBOOKQA, "answerKey": "E"})
    with pytest.raises(MoelabError, match=r'field "choices.label": 3 labels for 4'):
        openbookqa_item({**OPENBOOKQA, "choices": {**OPENBOOKQA["choices"], "label": ["A"] * 3}})


def test_mnli_hub_row_and_splits():
    item = mnli_item(MNLI)
    assert item.contexts == (
        "The shop sells bread every morning.\nQuestion: The shop never sells bread."
        " True, False or Neither?\nAnswer:",
    )
    assert item.targets == ("True", "Neither", "False") and item.label == 2
    with pytest.raises(MoelabError, match=r'field "label"'):
        mnli_item({**MNLI, "label": -1})  # the hub's unlabelled test rows
    spec = HUB_TASKS["mnli"]
    assert (spec.split, spec.extra_splits, spec.train_split) == (
        "validation_matched",
        ("validation_mismatched",),
        "train",
    )
    assert HUB_TASKS["mnli_mismatched"].split == "validation_mismatched"
    assert spec.finetune == "classify" and spec.class_names == (
        "entailment",
        "neutral",
        "contradiction",
    )
    items = convert_records(spec, "validation_matched", [MNLI, {**MNLI, "label": 0}])
    assert [it.label for it in items] == [2, 0]


def test_new_hub_tasks_carry_their_primary_mode():
    modes = {n: HUB_TASKS[n].primary_mode for n in ("record", "openbookqa", "mnli")}
    assert modes == {"record": "mean", "openbookqa": "calibrated", "mnli": "mean"}
    assert HUB_TASKS["record"].train_split is None and HUB_TASKS["record"].finetune is None


def test_bad_record_names_dataset_row_and_field():
    with pytest.raises(MoelabError, match=r'hf:baber/piqa validation row 7: field "label"'):
        piqa_item({**PIQA, "label": 2}, "hf:baber/piqa validation row 7")
    with pytest.raises(MoelabError, match=r'field "sol2": missing'):
        piqa_item({"goal": "g", "sol1": "a", "label": 0}, "hf:baber/piqa validation row 0")


def test_supported_tasks():
    assert set(HUB_TASKS) == {
        "hellaswag",
        "piqa",
        "winogrande",
        "copa",
        "boolq",
        "lambada",
        "record",
        "openbookqa",
        "mnli",
        "mnli_mismatched",
    }


def test_storycloze_and_unknown_names_are_refused():
    with pytest.raises(MoelabError, match="StoryCloze has no public hub copy"):
        get_task("hf:storycloze")
    with pytest.raises(MoelabError, match="supported: hf:hellaswag"):
        get_task("hf:nope")


def test_offline_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(MoelabError) as err:
        get_task("hf:piqa")
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message
    assert "hf:piqa" in message and "unreachable" in message and "tasks_dir" in message


def test_unreachable_hub_without_offline_env_fails_fast(monkeypatch):
    # The hub address points at a closed local port: the probe fails at once and the load is
    # switched to offline mode instead of retrying.
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(MoelabError, match="unreachable"):
        load_hub_task("hf:copa")
    assert time.monotonic() - start < 30


def test_missing_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MoelabError, match=r"pip install .moelab\[hf\]."):
        get_task("hf:hellaswag")
