"""The generic JSONL task schema any user can write.

Shapes, delimiter and shots: docs/evaluation.md, "Your own task: generic JSONL".
"""

from __future__ import annotations

from pathlib import Path

from moelab.errors import MoelabError
from moelab.eval.tasks.files import Row, read_jsonl
from moelab.eval.tasks.items import Item, Task


def _delimiter(contexts: list[str], targets: list[str]) -> str:
    if any(c == "" or c[-1].isspace() for c in contexts):
        return ""
    if any(t[:1].isspace() for t in targets):
        return ""
    return " "


def item_from_row(row: Row) -> tuple[str, Item]:
    """Parse one record; returns (kind, item)."""
    if row.has("contexts"):
        contexts = row.str_list("contexts", min_len=2)
        target = row.str("continuation")
        label = row.label_in_range("label", row.int("label"), len(contexts))
        return "choice", Item(tuple(contexts), (target,), label, _delimiter(contexts, [target]))
    context = row.str("context")
    if row.has("choices"):
        choices = row.str_list("choices", min_len=2)
        label = row.label_in_range("label", row.int("label"), len(choices))
        return "choice", Item((context,), tuple(choices), label, _delimiter([context], choices))
    if row.has("continuation"):
        target = row.str("continuation")
        if not target.strip():
            raise row.error("continuation", "must not be empty")
        return "last_word", Item((context,), (target,), 0, _delimiter([context], [target]))
    raise row.error(
        "choices",
        'missing: write {"context", "choices", "label"}, {"contexts", "continuation", "label"} '
        'or {"context", "continuation"}',
    )


def read_items(path: Path) -> tuple[str, list[Item]]:
    kinds: set[str] = set()
    items = []
    for row in read_jsonl(path):
        kind, item = item_from_row(row)
        if kinds and kind not in kinds:
            raise MoelabError(
                f"{path} line {row.line}: this record is a {kind!r} item but earlier ones are "
                f"{kinds.pop()!r}; one file holds one kind of item"
            )
        kinds.add(kind)
        items.append(item)
    if not items:
        raise MoelabError(f"{path}: no items (expected one JSON object per line)")
    return kinds.pop(), items


def train_file_for(path: Path) -> Path:
    return path.with_name(path.name[: -len(".jsonl")] + ".train.jsonl")


def load_generic(path: str | Path) -> Task:
    path = Path(path)
    kind, items = read_items(path)
    train_items, train_split, sources = None, None, [str(path)]
    train_path = train_file_for(path)
    if path.name.endswith(".jsonl") and train_path.is_file() and train_path != path:
        train_kind, train_items = read_items(train_path)
        if train_kind != kind:
            raise MoelabError(f"{train_path}: holds {train_kind!r} items but {path} {kind!r}")
        train_split = "train"
        sources.append(str(train_path))
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    return Task(
        name=name,
        kind=kind,
        items=items,
        split="eval",
        train_items=train_items,
        train_split=train_split,
        finetune="choice" if kind == "choice" else None,
        sources=sources,
    )
