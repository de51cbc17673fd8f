"""Reading task files with errors that name the file, the line and the field.

Every loader goes through these helpers, so a malformed file gives one line like
``tasks/foo.jsonl line 7: field "label": expected an integer, got "yes"`` instead of a traceback.
"""

from __future__ import annotations

import bz2
import copy
import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from moelab.data.textfile import json_lines
from moelab.errors import MoelabError
from moelab.eval.tasks.items import Item, Task
from moelab.hub import load_hf_dataset


class Row:
    """One record of a task file, with the place it came from for error messages. A nested
    object (``row.obj("passage")``) is a Row too, whose errors name the full field path
    (``field "passage.entities[2].end"``)."""

    def __init__(self, path: Path, line: int, data: dict[str, Any], prefix: str = ""):
        self.path, self.line, self.data, self.prefix = path, line, data, prefix

    def error(self, field: str, why: str) -> MoelabError:
        return MoelabError(f'{self.path} line {self.line}: field "{self.prefix}{field}": {why}')

    def has(self, field: str) -> bool:
        return field in self.data

    def _child(self, data: dict[str, Any], name: str) -> Row:
        child = copy.copy(self)  # keeps the subclass and its place (file and line, or hub row)
        child.data, child.prefix = data, f"{self.prefix}{name}."
        return child

    def obj(self, field: str) -> Row:
        value = self._get(field)
        if not isinstance(value, dict):
            raise self.error(field, f"expected an object, got {_show(value)}")
        return self._child(value, field)

    def objs(self, field: str, min_len: int = 1) -> list[Row]:
        value = self._get(field)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(field, f"expected a list of objects, got {_show(value)}")
        if len(value) < min_len:
            raise self.error(field, f"expected at least {min_len} entries, got {len(value)}")
        return [self._child(v, f"{field}[{i}]") for i, v in enumerate(value)]

    def str(self, field: str) -> str:
        value = self._get(field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {_show(value)}")
        return value

    def int(self, field: str) -> int:
        value = self._get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
                return int(value)  # "1" in files that write labels as strings
            raise self.error(field, f"expected an integer, got {_show(value)}")
        return value

    def str_list(self, field: str, min_len: int = 1) -> list[str]:
        value = self._get(field)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(field, f"expected a list of strings, got {_show(value)}")
        if len(value) < min_len:
            raise self.error(field, f"expected at least {min_len} entries, got {len(value)}")
        return value

    def choice(self, field: str, spellings: list[tuple[Any, int]]) -> int:
        """A label written in one of several spellings -> its class index. ``spellings`` is a
        list of (value, index) pairs; strings match case-insensitively, and JSON ``true`` does
        not match ``1``."""
        value = self._get(field)
        key = value.strip().lower() if isinstance(value, str) else value
        for k, v in spellings:
            if key == k and type(key) is type(k):
                return v
        allowed = ", ".join(_show(k) for k, _ in spellings)
        raise self.error(field, f"expected one of {allowed}, got {_show(value)}")

    def label_in_range(self, field: str, label: int, n: int) -> int:
        if not 0 <= label < n:
            raise self.error(field, f"label {label} is out of range for {n} candidates")
        return label

    def _get(self, field: str) -> Any:
        if field not in self.data:
            raise self.error(field, f"missing (the record has: {', '.join(self.data) or 'none'})")
        return self.data[field]


HUB_PREFIX = "hf:"  # task names that load the official hub splits: "hf:piqa" (tasks/hf.py)


def hub_split(task: str, dataset: str, config: str | None, split: str, source: str, local: str):
    """One split of a hub dataset for ``task``; a failure names ``local``, the files that can be
    given with ``--tasks-dir`` instead."""
    return load_hf_dataset(
        dataset,
        config,
        split,
        what=f"task {task} ({source})",
        missing_package=(
            f"task {task} needs the 'datasets' package: pip install 'moelab[hf]' "
            f"(or give {local} with {{key}})"
        ),
        fix=f"; give {local} with {{key}} instead",
        key="tasks_dir",
    )


class HubRow(Row):
    """A hub record; errors name the dataset, split and row instead of a file and line."""

    def __init__(self, where: str, data: dict[str, Any]):
        super().__init__(Path(where), 0, data)
        self.where = where

    def error(self, field: str, why: str) -> MoelabError:
        return MoelabError(f'{self.where}: field "{self.prefix}{field}": {why}')


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (bz2 allowed); a line that is not UTF-8 is an error
    naming the line, not a traceback."""
    if not path.is_file():
        raise MoelabError(f"task file not found: {path}")
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise MoelabError(f"cannot read task file {path}: {e.strerror or e}") from None
    with f:
        for n, raw in _raw_lines(f, path):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MoelabError(
                    f"{path} line {n}: not UTF-8 text ({e.reason} at byte {e.start}); "
                    "save the file as UTF-8"
                ) from None


def _raw_lines(f, path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        yield from enumerate(f, start=1)
    except (OSError, EOFError) as e:  # unreadable, or a damaged .bz2
        raise MoelabError(
            f"cannot read task file {path}: {getattr(e, 'strerror', None) or e}"
        ) from None


def read_jsonl(path: Path) -> Iterator[Row]:
    """Records of a JSON-lines file; blank lines are skipped, anything else must be an object."""
    for n, data in json_lines(_utf8_lines(path), lambda n: f"{path} line {n}"):
        if not isinstance(data, dict):
            raise MoelabError(f"{path} line {n}: expected a JSON object, got {_show(data)}")
        yield Row(path, n, data)


def read_tsv(path: Path, fields: list[str] | None = None) -> Iterator[Row]:
    """Records of a tab-separated file with a header line (``fields`` checks it contains them)."""
    with _decoded(path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise MoelabError(f"{path}: empty file, expected a header line")
        header = [h.strip() for h in header]
        for name in fields or []:
            if name not in header:
                raise MoelabError(f"{path} line 1: header lacks column {name!r} (has {header})")
        for n, cells in enumerate(reader, start=2):
            if not cells or not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise MoelabError(
                    f"{path} line {n}: expected {len(header)} tab-separated columns, "
                    f"got {len(cells)}"
                )
            yield Row(path, n, dict(zip(header, cells)))


def read_csv(path: Path, fields: list[str]) -> Iterator[Row]:
    """Records of a comma-separated file with a header line containing ``fields``."""
    with _decoded(path) as f:
        reader = csv.DictReader(f)
        for name in fields:
            if name not in (reader.fieldnames or []):
                raise MoelabError(f"{path} line 1: header lacks column {name!r}")
        for n, data in enumerate(reader, start=2):
            yield Row(path, n, dict(data))


def read_lines(path: Path) -> list[str]:
    return [line.rstrip("\r\n") for _, line in _utf8_lines(path)]


def _decoded(path: Path) -> io.StringIO:
    """The whole file as text (for the csv module), checked to be UTF-8 line by line."""
    return io.StringIO("".join(line for _, line in _utf8_lines(path)), newline=None)


def first_file(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def need_file(folder: Path, names: list[str], what: str | None = None) -> Path:
    """The first of ``names`` in ``folder``; a one-line refusal (``what``: the task) if none."""
    path = first_file(folder, names)
    if path is None:
        raise MoelabError(
            f"{what + ': ' if what else ''}none of {', '.join(names)} in {folder}; point {{key}} "
            "at the folder holding the task folders or pass a JSONL file",
            key="tasks_dir",
        )
    return path


def split_task(
    name: str,
    folder: Path,
    names: list[str],
    train_names: list[str],
    parse: Callable[[Row], Item],
    split: str,
    *,
    what: str | None = None,
    reader: Callable[[Path], Iterable[Row]] = read_jsonl,
    kind: str = "choice",
    **fields: Any,
) -> Task:
    """A task of one record per item: the evaluated split from the first of ``names`` that
    exists (required), shots and fine-tuning items from the first of ``train_names`` (if any)."""
    path = need_file(folder, names, what)
    items = [parse(row) for row in reader(path)]
    train = first_file(folder, train_names)
    train_items = [parse(row) for row in reader(train)] if train else None
    return Task(
        name,
        kind,
        items,
        split,
        train_items,
        "train" if train_items else None,
        sources=[str(p) for p in (path, train) if p is not None],
        **fields,
    )
