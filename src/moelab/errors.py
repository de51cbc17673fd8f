"""The one exception type for problems a user can cause and fix.

The CLI prints it as a single line (``error: ...``) and exits with code 2. Library code raises it
for bad configs, missing or corrupt files and wrong schemas; anything else is a bug and keeps its
traceback. A message about one argument names it as the Python caller knows it (``stride``,
``max_tokens``): the message marks the places with ``{key}`` and gives the name as ``key``, and
the CLI writes the command's flag there instead (``--stride``, ``--max-tokens``).
"""

from __future__ import annotations


class MoelabError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix.
    ``key``: the argument the message is about, written where the message says ``{key}``."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message if key is None else message.replace("{key}", key))
        self.key, self.template = key, message

    def worded(self, name: str) -> str:
        """The message naming the argument ``name`` (e.g. its command-line flag)."""
        return self.template.replace("{key}", name) if self.key else str(self)


def check_at_least_one(**values: int | None) -> None:
    """Refuse the first of ``values`` (argument name -> value) that is given and below 1."""
    for key, value in values.items():
        if value is not None and value < 1:
            raise MoelabError(f"{{key}} must be >= 1, got {value}", key=key)


EXIT_USER_ERROR = 2
