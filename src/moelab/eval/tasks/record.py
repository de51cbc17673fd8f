"""ReCoRD (SuperGLUE): cloze questions over news passages, zero-shot in the paper.

Official SuperGLUE JSONL (``ReCoRD/val.jsonl``), one passage per line::

    {"passage": {"text": str, "entities": [{"start": int, "end": int}, ...]},
     "qas": [{"query": str with "@placeholder", "answers": [{"start", "end", "text"}, ...]}, ...]}

Entity spans include their ``end`` character (``text[start:end + 1]``), as the SuperGLUE reader
of the hub's ``super_glue`` script slices them. Each query is one item:

- context: the passage before its first ``@highlight`` marker, a blank line, then each highlight
  as ``"  - " + highlight + ".\\n"`` (lm-evaluation-harness's ``record`` template);
- candidates: the passage's distinct entity strings in sorted order (the harness and the hub copy
  both deduplicate and sort), each put in place of ``@placeholder`` in ``"  - " + query``, with
  no delimiter (the context already ends with a newline);
- correct: every candidate equal to one of the gold answers after the official scorer's
  normalisation (lower case, punctuation and the articles a/an/the removed, whitespace
  collapsed): the official exact match takes the maximum over the answer aliases, so picking any
  matching entity scores 1. ``label`` is the first such candidate (the one shown in shots).

Only the evaluated split is read: the train file (100k queries over 65k passages) would make
every zero-shot evaluation load hundreds of MB for nothing; shots, if asked for, come from the
evaluated split minus the item.
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
