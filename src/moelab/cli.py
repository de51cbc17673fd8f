"""The ``moelab`` command: a thin shell that parses arguments and calls library functions.

Each subcommand lives in ``moelab/commands/<name>.py`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command
runs, so ``moelab presets`` does not pay for importing the trainer.

A :class:`~moelab.errors.MoelabError` anywhere below becomes one line on stderr and exit code 2,
the argument it names shown as the command's flag (:func:`for_the_command_line`).
A reader that closes the pipe early (``moelab presets --json | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from moelab import __version__
from moelab.errors import EXIT_USER_ERROR, MoelabError
from moelab.progress import log_to_stderr

# name -> one-line help. Order is the order of the flow.
COMMANDS: dict[str, str] = {
    "presets": "list model presets with parameters and training FLOPs",
    "plan": "memory per GPU and step time of a preset on a cluster shape, on paper",
    "prepare": "tokenize text sources into per-domain shards",
    "train": "train a model under a compute budget (resumes if RUN_DIR has a checkpoint)",
    "generate": "sample text from a trained run",
    "eval": "perplexity per domain and zero/few-shot priming",
    "finetune": "full-parameter fine-tuning on a classification or choice task",
    "study": "run a compute-matched dense vs MoE grid and write a report",
    "report": "rebuild a study's report from finished runs",
    "export": "export a run to a Hugging Face model folder",
    "consolidate": "write a run's sharded checkpoint (several processes) as one safetensors file",
    "import": "import a Hugging Face model folder into a run directory",
    "upcycle": "turn a trained dense run into an MoE run (experts copied from its FFN) to train on",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other user error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moelab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"moelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = _command_module(name)
        module.add_arguments(p)
        p.set_defaults(flags=_flags_of(p, getattr(module, "RENAMED", {})))
    return parser


def _flags_of(parser: argparse.ArgumentParser, renamed: dict[str, str]) -> dict[str, str]:
    """Argument name (as the library calls it) -> the flag that sets it, its first long spelling
    (``--builtin``, not ``--no-builtin``). A flag's name is the library's, unless the command's
    ``RENAMED`` maps a library name to it."""
    flags = {
        a.dest: next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
        for a in parser._actions
        if a.option_strings
    }
    return {**flags, **{name: flags[dest] for name, dest in renamed.items()}}


def for_the_command_line(error: MoelabError, flags: dict[str, str]) -> str:
    """The message with the argument it is about (``error.key``) named by the command's flag:
    "stride must be ..." -> "--stride must be ..."."""
    return error.worded(flags.get(error.key or "", error.key or ""))


def _command_module(name: str):
    module_name = "import_" if name == "import" else name
    return importlib.import_module(f"moelab.commands.{module_name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log_to_stderr()  # the library logs its notes; a command shows them, one line each
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        rc = int(_command_module(args.command).run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return rc
    except MoelabError as e:
        print(f"error: {for_the_command_line(e, args.flags)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of stdout went away (``| head``): what it wanted it has, so end quietly, as
    ``cat`` does, with 128 + SIGPIPE. stdout is pointed at /dev/null first: Python flushes it
    again at exit, which would raise (and print) the same error once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
