"""Task names -> loaders, and where task files are looked up.

``get_task("piqa")``, ``get_task("hf:piqa")`` or ``get_task("my/file.jsonl")``; the tasks
directory is explicit (``tasks_dir`` or ``MOELAB_TASKS_DIR``): docs/evaluation.md, "Tasks and
where they are read from".
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks import blimp, classification, mnli, openbookqa, paper, record
from moelab.eval.tasks.generic import load_generic
from moelab.eval.tasks.items import Task

ENV_TASKS_DIR = "MOELAB_TASKS_DIR"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    folder: str  # folder name under the tasks directory
    load: Callable[[Path], Task]
    description: str
    # Loads a subset named after a colon (``blimp:syntax``); None: the task takes no selector.
    load_selected: Callable[[Path, str], Task] | None = None


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("hellaswag", "hellaswag", paper.load_hellaswag, "commonsense sentence ending"),
        TaskSpec("piqa", "piqa", paper.load_piqa, "physical commonsense, 2 solutions"),
        TaskSpec("winogrande", "winogrande", paper.load_winogrande, "pronoun resolution, partial"),
        TaskSpec("storycloze", "storycloze", paper.load_storycloze, "story ending, 2 choices"),
        TaskSpec("copa", "superglue_copa", paper.load_copa, "cause/effect, 2 choices"),
        TaskSpec("lambada", "lambada", paper.load_lambada, "last-word prediction (greedy)"),
        TaskSpec("boolq", "superglue_boolq", classification.load_boolq, "yes/no questions"),
        TaskSpec("sst2", "glue_sst2", classification.load_sst2, "sentence sentiment"),
        TaskSpec("rte", "superglue_rte", classification.load_rte, "entailment, 2-way"),
        TaskSpec("cb", "superglue_cb", classification.load_cb, "entailment, 3-way"),
        TaskSpec("mrpc", "glue_mrpc", classification.load_mrpc, "paraphrase detection"),
        TaskSpec(
            "record",
            "superglue_record",
            record.load_record,
            "cloze over a passage's entities, zero-shot",
        ),
        TaskSpec(
            "openbookqa",
            "openbookqa",
            openbookqa.load_openbookqa,
            "science questions, 4 choices, few-shot",
        ),
        TaskSpec(
            "mnli",
            "glue_mnli",
            mnli.load_mnli,
            "entailment, 3-way, matched (fine-tuning also scores mismatched)",
        ),
        TaskSpec(
            "mnli_mismatched",
            "glue_mnli",
            mnli.load_mnli_mismatched,
            "entailment, 3-way, mismatched",
        ),
        TaskSpec(
            "blimp",
            "blimp",
            blimp.load_blimp,
            "grammatical vs ungrammatical sentence, 67 paradigms",
            load_selected=blimp.load_blimp,
        ),
    ]
}


def default_tasks_dir() -> Path | None:
    """``$MOELAB_TASKS_DIR``, or None: never a guess relative to where moelab is installed."""
    env = os.environ.get(ENV_TASKS_DIR)
    return Path(env) if env else None


def _looks_like_file(name: str) -> bool:
    return name.endswith(".jsonl") or os.sep in name or "/" in name


def get_task(name_or_path: str, tasks_dir: str | Path | None = None) -> Task:
    """Load a registered task by name (``blimp:SELECTION`` for a subset of a task that takes
    one), its official hub splits (``hf:NAME``), or a generic JSONL task from a path."""
    if name_or_path.startswith("hf:"):
        from moelab.eval.tasks.hf import load_hub_task  # imports datasets only when asked

        return load_hub_task(name_or_path)
    spec_name, colon, selector = name_or_path.partition(":")
    if colon and spec_name in TASKS and TASKS[spec_name].load_selected is None:
        raise MoelabError(f"task {spec_name!r} takes no ':' selection, got {name_or_path!r}")
    if name_or_path in TASKS or (colon and spec_name in TASKS):
        spec = TASKS[spec_name]
        root = Path(tasks_dir) if tasks_dir is not None else default_tasks_dir()
        if root is None:
            raise MoelabError(
                f"task {name_or_path!r}: no tasks directory; pass {{key}} DIR or set "
                f"{ENV_TASKS_DIR} to the folder holding {spec.folder}/",
                key="tasks_dir",
            )
        folder = root / spec.folder
        if not folder.is_dir():
            folder = root / spec.name
        if not folder.is_dir():
            raise MoelabError(
                f"task {name_or_path!r}: folder {root / spec.folder} not found; pass {{key}}"
                f" or set {ENV_TASKS_DIR} to the folder that holds it",
                key="tasks_dir",
            )
        if colon and spec.load_selected is not None:
            return spec.load_selected(folder, selector)
        return spec.load(folder)
    if _looks_like_file(name_or_path) or Path(name_or_path).is_file():
        return load_generic(name_or_path)
    close = difflib.get_close_matches(name_or_path, list(TASKS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise MoelabError(
        f"unknown task {name_or_path!r}{hint}; known: {', '.join(TASKS)}, or a path to a .jsonl"
    )
