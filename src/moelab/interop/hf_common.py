"""Pieces export and import share: output-folder checks, a quiet transformers, the tokenizer
files transformers loads, and the logits check that proves an export or import exact."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from moelab.data.tokenizer import load_tokenizer, special_ids
from moelab.errors import MoelabError
from moelab.paths import check_can_create

LOGIT_TOLERANCE = 1e-4  # max |moelab - transformers| on fp32 logits
HF_CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def require_transformers(command: str) -> None:
    """One line with the install hint, not a ModuleNotFoundError traceback, when the optional
    ``transformers`` package is missing (checked before any work)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise MoelabError(
            f"moelab {command} needs the 'transformers' package: pip install 'moelab[hf]'"
        ) from None


def check_new_folder(out: Path, key: str = "out") -> None:
    """An output folder must not exist or be empty: nothing of the user's is ever replaced."""
    check_can_create(out, key)
    if out.exists():
        if not out.is_dir():
            raise MoelabError(f"{{key}} {out}: exists and is not a folder", key=key)
        if any(out.iterdir()):
            raise MoelabError(
                f"{{key}} {out}: folder is not empty; choose a new or empty folder", key=key
            )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or info logs from transformers while we drive it like a library."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # Qwen2-MoE's zero-width shared expert makes torch warn that initialising an empty
            # tensor does nothing, which is exactly the point.
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hf_tokenizer(tokenizer_json: Path, max_len: int) -> tuple[Any, int, int]:
    """A ``PreTrainedTokenizerFast`` over moelab's tokenizer.json, and (eot_id, pad_id).

    bos = eos = the end-of-text token (GPT-2's convention, and the token moelab puts before an
    empty context), pad = the padding token when the vocabulary has one. Special-token strings
    inside text are split like plain text, as moelab encodes them, so both sides produce the
    same ids for any string. No post-processor: nothing is added to encoded text."""
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(tokenizer_json)
    eot, pad = special_ids(tok, where=str(tokenizer_json))
    kwargs: dict[str, Any] = {
        "bos_token": tok.id_to_token(eot),
        "eos_token": tok.id_to_token(eot),
        "pad_token": tok.id_to_token(pad),
    }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_len,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    return fast, eot, pad


def probe_tokens(vocab_size: int, max_len: int) -> torch.Tensor:
    """A fixed random batch (2 sequences of up to 32 tokens) for the exactness check."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, min(32, max_len)), generator=gen)


@torch.no_grad()
def max_logit_diff(moelab_model: torch.nn.Module, hf_model: torch.nn.Module) -> float:
    """Largest |difference| of fp32 logits of the two models on :func:`probe_tokens`."""
    cfg = moelab_model.cfg
    tokens_BT = probe_tokens(cfg.vocab_size, cfg.max_seq_len)
    ours_BTV = moelab_model.eval()(tokens_BT).logits_BTV.float()
    theirs_BTV = hf_model.eval()(tokens_BT).logits.float()
    return float((ours_BTV - theirs_BTV).abs().max())
