"""One module per CLI subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Where the library takes a settings dataclass, :func:`add_settings` makes a ``--field-name`` flag
per field with the field's own default and :func:`settings_of` reads them back, so every default
is written once, in the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    helps: dict[str, str],
    flags: dict[str, str] | None = None,
    **types: Any,
) -> None:
    """A flag for each field of ``cls`` named in ``helps`` (field -> help text), whose default
    is the field's; ``flags``: a field's flag where it is not ``--field-name``; ``types``: a
    field's parser where its default's type is not it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, text in helps.items():
        default = fields[name].default
        shown = ",".join(f"{x:g}" for x in default) if isinstance(default, tuple) else default
        parser.add_argument(
            (flags or {}).get(name, "--" + name.replace("_", "-")),
            dest=name,
            type=types.get(name, type(default)),
            default=default,
            metavar={float: "F", tuple: "X,Y"}.get(type(default), "N"),
            help=text if default is None else f"{text} (default {shown})",
        )


def settings_of(args: argparse.Namespace, cls: type, **values: Any) -> Any:
    """``cls`` from the flags :func:`add_settings` made, and ``values`` for the other fields."""
    names = {f.name for f in dataclasses.fields(cls)} - set(values)
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values)
