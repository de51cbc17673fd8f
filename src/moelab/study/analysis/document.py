"""A tiny document model: the report is built once as blocks, and :func:`to_markdown` and
:func:`to_html` render it, so report.md and report.html cannot drift apart.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str  # may contain `code` and **bold**


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # numeric columns from this index on

    @classmethod
    def of(
        cls,
        items: Iterable[Any],
        columns: Sequence[tuple[str, Callable[[Any], str]]],
        align_right_from: int = 1,
    ) -> Table:
        """One row per item; ``columns``: (header, the item's cell) pairs."""
        rows = [[cell(x) for _, cell in columns] for x in items]
        return cls([header for header, _ in columns], rows, align_right_from)


@dataclass
class Image:
    path: str  # relative to the report
    alt: str


@dataclass
class Code:
    text: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            seps = ["---" if i < b.align_right_from else "---:" for i in range(len(b.header))]
            out.append("|" + "|".join(seps) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({b.path})", ""]
        elif isinstance(b, Code):
            out += ["```", b.text, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px}th{background:#f3f3f3}td.n{text-align:right}
img{max-width:100%;border:1px solid #eee}code,pre{background:#f6f6f6}pre{padding:.6em;
overflow-x:auto}"""


def to_html(doc: Document) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append("<table><thead><tr>")
            out.append("".join(f"<th>{_inline_html(h)}</th>" for h in b.header))
            out.append("</tr></thead><tbody>")
            for row in b.rows:
                cells = []
                for i, c in enumerate(row):
                    cls = ' class="n"' if i >= b.align_right_from else ""
                    cells.append(f"<td{cls}>{_inline_html(c)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(b, Image):
            out.append(f'<p><img src="{html.escape(b.path)}" alt="{html.escape(b.alt)}"></p>')
        elif isinstance(b, Code):
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
