"""ReCoRD (SuperGLUE): cloze questions over news passages, zero-shot in the paper.

File format, template, candidates and alias matching: docs/evaluation.md, "ReCoRD, OpenBookQA
and MNLI".
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import Row, first_file, read_jsonl
from moelab.eval.tasks.items import Item, Task

PLACEHOLDER = "@placeholder"
HIGHLIGHT = "\n@highlight\n"
PRIMARY_MODE = "mean"  # GPT-3 (Brown et al. 2020) sec. 2.4: per-token likelihood by default

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official ReCoRD/SQuAD answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Official exact match: the best over the gold answer aliases."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def context_text(passage: str) -> str:
    first, *highlights = passage.strip().split(HIGHLIGHT)
    return first + "\n\n" + "".join(f"  - {h}.\n" for h in highlights)


def build_item(row: Row, passage: str, query: str, entities: list[str], answers: list[str]) -> Item:
    """One query as an item; errors are raised through ``row`` (naming the file or hub row)."""
    if PLACEHOLDER not in query:
        raise row.error("query", f"has no {PLACEHOLDER} to fill")
    candidates = sorted(set(entities))
    if not candidates:
        raise row.error("entities", "the passage has no entities to choose from")
    if not answers:
        raise row.error("answers", "no gold answer (test files are unlabelled: use val.jsonl)")
    golds = tuple(i for i, e in enumerate(candidates) if exact_match(e, answers))
    if not golds:
        shown = ", ".join(repr(a) for a in answers[:3])
        raise row.error("answers", f"none of {shown} matches a passage entity")
    targets = tuple("  - " + query.replace(PLACEHOLDER, e) for e in candidates)
    return Item((context_text(passage),), targets, golds[0], delimiter="", golds=golds)


def _entities(passage: Row, text: str) -> list[str]:
    out = []
    for span in passage.objs("entities"):
        start, end = span.int("start"), span.int("end")
        if not 0 <= start <= end < len(text):
            raise span.error(
                "end", f"span {start}-{end} lies outside the passage text ({len(text)} characters)"
            )
        out.append(text[start : end + 1])  # SuperGLUE spans include their end character
    return out


def items_from_row(row: Row) -> list[Item]:
    """Every query of one official JSONL line."""
    passage = row.obj("passage")
    text = passage.str("text")
    entities = _entities(passage, text)
    items = []
    for qa in row.objs("qas"):
        answers = (
            [a.str("text") for a in qa.objs("answers", min_len=0)] if qa.has("answers") else []
        )
        items.append(build_item(qa, text, qa.str("query"), entities, answers))
    return items


def load_record(folder: Path) -> Task:
    path = first_file(folder, ["val.jsonl", "dev.jsonl"])
    if path is None:
        raise MoelabError(
            f"record: none of val.jsonl, dev.jsonl in {folder}; point {{key}} at the folder "
            "holding superglue_record/ (SuperGLUE's ReCoRD/val.jsonl)",
            key="tasks_dir",
        )
    items = [item for row in read_jsonl(path) for item in items_from_row(row)]
    if not items:
        raise MoelabError(f"{path}: no queries (expected one passage with its qas per line)")
    return Task(
        "record",
        "choice",
        items,
        "val",
        sources=[str(path)],
        primary_mode=PRIMARY_MODE,
    )
