"""Tokenizer: training, special tokens, and encoding in pieces giving the same ids as whole."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moelab.data.tokenizer import (
    MIN_VOCAB,
    DocumentEncoder,
    can_cut_documents,
    cut_document,
    special_ids,
    train_bpe,
)
from moelab.errors import MoelabError

TEXT = (
    "def route(x):\n    return top_k(x)\n\nThe router's choice isn't fixed.\n"
    "Numbers 12 345 and caf\u00e9 \u4e2d\u6587.\n  \n\tTabbed line\nlast\n"
) * 30


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], 320)


def test_special_tokens_and_round_trip(tok):
    assert special_ids(tok) == (0, 1)
    ids = tok.encode("a <|endoftext|> b", add_special_tokens=False).ids
    assert 0 not in ids  # the literal string is text, never a document boundary
    assert tok.decode(ids) == "a <|endoftext|> b"
    with pytest.raises(MoelabError, match=f"at least {MIN_VOCAB}"):
        train_bpe([TEXT], MIN_VOCAB - 1)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=" \n\tab'.1\u00e9Z", max_size=300), st.integers(1, 40))
def test_cut_pieces_encode_like_the_whole(tok, text, piece_chars):
    assert can_cut_documents(tok)
    pieces = cut_document(text, piece_chars)
    assert "".join(pieces) == text
    whole = tok.encode(text, add_special_tokens=False).ids
    parts = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert parts == whole


def test_encode_documents_matches_plain_encode(tok):
    docs = [TEXT, "short", TEXT[:500]]
    with DocumentEncoder(tok, 1) as encoder:
        got = encoder.encode(docs)
    assert [g.tolist() for g in got] == [tok.encode(d, add_special_tokens=False).ids for d in docs]


def test_cutting_is_off_for_other_pre_tokenizers(tok):
    spec = json.loads(tok.to_str())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    from tokenizers import Tokenizer

    assert not can_cut_documents(Tokenizer.from_str(json.dumps(spec)))


@pytest.mark.parametrize("name", ["[EOS]", "<eot>", "<|end_of_text|>", "</s>"])
def test_data_eval_and_generate_agree_on_the_end_of_text_token(name):
    """One list of end-of-text names (moelab.data.tokenizer) serves data, eval and generate."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from moelab.data.tokenizer import eot_token_id

    vocab = {"a": 0, "b": 1, name: 2}
    other = Tokenizer(WordLevel(vocab, unk_token="a"))
    assert eot_token_id(other) == 2
    assert eot_token_id(other, default=0) == 2
    assert special_ids(other) == (2, 2)  # no padding token: pads with the end-of-text id
    plain = Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a"))
    assert eot_token_id(plain) is None and eot_token_id(plain, default=7) == 7
