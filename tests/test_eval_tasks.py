"""Loaders of every registered task on ../shared/data: item counts as in each folder's
SOURCE.md, labels in range, templates as in PAPER.md. Skipped when the data is absent."""

from __future__ import annotations

import pytest

from moelab.eval.tasks import TASKS, default_tasks_dir, get_task

DATA = default_tasks_dir()

# (evaluated split, items, training split items or None) from the SOURCE.md files
COUNTS = {
    "hellaswag": ("val", 10042, None),
    "piqa": ("valid", 1838, None),  # train.jsonl is missing (only its labels are staged)
    "winogrande": ("dev", 1267, None),
    "storycloze": ("test", 1871, 1871),  # shots / fine-tuning from the 2016 val set
    "copa": ("val", 100, 400),
    "lambada": ("test", 5153, None),
    "boolq": ("val", 3270, None),  # train (9427) is missing
    "sst2": ("dev", 872, 67349),
    "rte": ("val", 277, 2490),
    "cb": ("val", 56, 250),
    "mrpc": ("test", 1725, 4076),
    # not staged in ../shared/data (INVENTORY.md): checked when someone adds the official files
    "record": ("val", 10000, None),  # SuperGLUE ReCoRD val queries; train is not read
    "openbookqa": ("test", 500, 4957),
    "mnli": ("dev_matched", 9815, 392702),
    "mnli_mismatched": ("dev_mismatched", 9832, 392702),
}
# BLiMP is checked on its own files in tests/test_eval_blimp.py (its candidates have no context)
CHECKED_ELSEWHERE = {"blimp"}

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        DATA is None or not DATA.is_dir(),
        reason="../shared/data (or $MOELAB_TASKS_DIR) is absent: task loaders not checked",
    ),
]


def test_every_registered_task_has_expected_counts():
    assert set(COUNTS) == set(TASKS) - CHECKED_ELSEWHERE


@pytest.mark.parametrize("name", list(COUNTS))
def test_loader_counts_and_labels(name):
    if not (DATA / TASKS[name].folder).is_dir():
        pytest.skip(f"{DATA / TASKS[name].folder} is absent")
    split, n_items, n_train = COUNTS[name]
    task = get_task(name, DATA)
    assert task.split == split and len(task.items) == n_items
    assert (len(task.train_items) if task.train_items else None) == n_train
    for item in task.items + (task.train_items or []):
        assert 0 <= item.label < item.n_candidates and item.is_correct(item.label)
        for ctx, cont in item.candidates():
            assert ctx.strip() and cont.strip()
    if task.finetune == "classify":
        assert len(task.class_names) == task.items[0].n_candidates
    labels = {it.label for it in task.items}
    expected = 1 if task.kind == "last_word" else task.items[0].n_candidates
    if name != "record":  # ReCoRD's candidates are each passage's entities, not fixed classes
        assert len(labels) == expected  # every class occurs (a mapping error would collapse them)


def test_templates_follow_the_paper():
    def first(name):
        return get_task(name, DATA).items[0]

    hs = first("hellaswag")  # activity_label + ": " + ctx, then " " + ending
    assert hs.contexts[0].startswith("Roof shingle removal: A man is sitting on a roof.")
    assert hs.n_candidates == 4 and hs.candidates()[3][1] == " starts pulling up roofing on a roof."
    piqa = first("piqa")  # goal + " " + solution
    assert piqa.candidates()[0][0] == "How do I ready a guinea pig cage for it's new occupants?"
    assert piqa.candidates()[0][1].startswith(" Provide the guinea pig")
    wino = first("winogrande")  # "_" filled by each option, the rest scored
    assert wino.candidates() == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    copa = first("copa")
    assert copa.candidates()[1] == (
        "The man turned on the faucet therefore",
        " water flowed from the spout.",
    )
    story = get_task("storycloze", DATA).train_items[0]  # the four sentences, then the ending
    assert story.contexts[0].startswith("Rick grew up in a troubled household. He never found")
    assert story.label == 0 and story.candidates()[0][1] == " He is happy now."
    lam = first("lambada")
    assert lam.candidates()[0][1] == " signs" and not lam.contexts[0].endswith(" ")
