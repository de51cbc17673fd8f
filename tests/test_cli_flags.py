"""One source for every default and the CLI's wording of library errors (issue 18 item 2): the
flags of a settings dataclass take its defaults, and an error about one argument names it as
Python does and as the command's flag on the command line."""

from __future__ import annotations

import dataclasses

import pytest

from moelab.cli import build_parser, for_the_command_line
from moelab.commands import settings_of
from moelab.data.prepare import PrepareSettings
from moelab.errors import MoelabError, check_at_least_one
from moelab.eval import perplexity, priming
from moelab.eval.finetune import FinetuneSettings
from moelab.eval.logprobs import BATCH_TOKENS
from moelab.generate import Sampling, generate_text


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_flags_default_to_the_settings_fields():
    assert settings_of(_args("prepare", "--out", "D"), PrepareSettings) == PrepareSettings()
    got = settings_of(_args("finetune", "R", "--task", "t"), FinetuneSettings)
    assert got == FinetuneSettings()
    assert settings_of(_args("generate", "R", "--prompt", "x"), Sampling) == Sampling()
    args = _args("eval", "R", "--ppl")
    assert (args.batch_tokens, args.batch_size) == (BATCH_TOKENS, perplexity.BATCH_SIZE)
    # and a flag set on the command line reaches its field
    args = _args("prepare", "--out", "D", "--val-fraction", "0.2", "--vocab-size", "512")
    want = dataclasses.replace(PrepareSettings(), val_fraction=0.2, vocab_size=512)
    assert settings_of(args, PrepareSettings) == want
    # a field whose flag is named otherwise: generate's --max-tokens sets max_new_tokens
    args = _args("generate", "R", "--prompt", "x", "--max-tokens", "-1")
    assert settings_of(args, Sampling).max_new_tokens == -1
    with pytest.raises(MoelabError) as caught:
        settings_of(args, Sampling).validate()
    assert str(caught.value) == "max_new_tokens must be >= 0, got -1"
    assert for_the_command_line(caught.value, args.flags) == "--max-tokens must be >= 0, got -1"


def test_errors_name_the_argument_in_python_and_the_flag_on_the_command_line():
    with pytest.raises(MoelabError) as caught:
        perplexity.check_options(context=64, max_tokens=0)
    assert str(caught.value) == "max_tokens must be >= 1, got 0"
    eval_flags = _args("eval", "R", "--ppl").flags
    assert for_the_command_line(caught.value, eval_flags) == "--max-tokens must be >= 1, got 0"
    # a library name that is not the flag's: eval's RENAMED
    err = MoelabError("{key} x.txt: no such file or folder", key="paths")
    assert str(err) == "paths x.txt: no such file or folder"
    assert for_the_command_line(err, eval_flags) == "--ppl x.txt: no such file or folder"
    # every place the message names the argument
    err = MoelabError("{key} cuda: no CUDA device here; use {key} cpu", key="device")
    assert (
        for_the_command_line(err, eval_flags)
        == "--device cuda: no CUDA device here; use --device cpu"
    )
    # an argument the command has no flag for, and an error about no argument, stay as they are
    with pytest.raises(MoelabError) as caught:
        priming.check_options(shots=1, fewshot_sampling="sometimes")
    assert for_the_command_line(caught.value, {}) == str(caught.value)
    assert str(caught.value).startswith("fewshot_sampling must be one of")
    assert _args("prepare", "--out", "D").flags["builtin"] == "--builtin"  # not --no-builtin
    plain = MoelabError("nothing to evaluate")
    assert for_the_command_line(plain, eval_flags) == "nothing to evaluate"
    with pytest.raises(MoelabError, match="^builtin_max_bytes must be >= 1, got 0$"):
        PrepareSettings(builtin_max_bytes=0).validate()
    with pytest.raises(MoelabError, match="^epochs must be >= 1, got 0$"):
        check_at_least_one(limit=None, epochs=0)


def test_settings_as_keywords_are_typed_and_checked_by_name(tmp_path):
    """prepare, finetune_run and generate take their settings' fields as keywords too: an
    unknown one is refused in one line naming it (it was a TypeError traceback), before any
    work, and a value is checked like a config value."""
    from moelab.data import prepare

    with pytest.raises(MoelabError, match="unknown config key temprature; valid keys: "):
        generate_text(tmp_path / "no-run", "x", temprature=0.5)
    with pytest.raises(MoelabError, match="unknown config key vocab; valid keys: "):
        prepare(tmp_path / "out", ["a=x.txt"], vocab=300)
    with pytest.raises(MoelabError, match="top_k: expected an integer"):
        generate_text(tmp_path / "no-run", "x", top_k="many")
    assert not (tmp_path / "out").exists()
