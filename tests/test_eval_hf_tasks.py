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
    copa_item,
    hellaswag_item,
    lambada_item,
    load_hub_task,
    piqa_item,
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


def test_bad_record_names_dataset_row_and_field():
    with pytest.raises(MoelabError, match=r'hf:baber/piqa validation row 7: field "label"'):
        piqa_item({**PIQA, "label": 2}, "hf:baber/piqa validation row 7")
    with pytest.raises(MoelabError, match=r'field "sol2": missing'):
        piqa_item({"goal": "g", "sol1": "a", "label": 0}, "hf:baber/piqa validation row 0")


def test_supported_tasks():
    assert set(HUB_TASKS) == {"hellaswag", "piqa", "winogrande", "copa", "boolq", "lambada"}


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
    assert "hf:piqa" in message and "unreachable" in message and "--tasks-dir" in message


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
