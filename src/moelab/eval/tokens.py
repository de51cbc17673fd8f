"""The text -> token ids function evaluation uses, from a Hugging Face ``tokenizers.Tokenizer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_encode(tokenizer: Any) -> Callable[[str], list[int]]:
    """Plain encoding without special tokens (a post-processor would add them mid-prompt)."""
    if callable(tokenizer) and not hasattr(tokenizer, "encode"):
        return tokenizer
    cache: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        ids = cache.get(text)
        if ids is None:
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            if len(cache) < 200_000:
                cache[text] = ids
        return list(ids)

    return encode
