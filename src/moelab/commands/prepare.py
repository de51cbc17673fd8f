"""`moelab prepare`: not implemented yet (see the open issue for it)."""

from moelab.errors import MoelabError


def add_arguments(parser) -> None:
    parser.add_argument("rest", nargs="*")


def run(args) -> int:
    raise MoelabError("'moelab prepare' is not implemented yet")
