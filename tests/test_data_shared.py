"""Integration: real corpora from ../shared/data plus the built-in corpus in one preparation."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.data import PreparedData, prepare
from moelab.data.sources import text_to_docs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED / "gutenberg_nltk").is_dir(),
        reason=f"{SHARED} is absent (real corpora are only staged on the project machines)",
    ),
]


def test_prepare_real_domains_and_builtin(tmp_path):
    g, r, w = SHARED / "gutenberg_nltk", SHARED / "reuters21578", SHARED / "wikitext2"
    result = prepare(
        tmp_path / "data",
        [
            # two of these books are Latin-1 (chesterton-ball, shakespeare-caesar)
            f"fiction={g}/chesterton-*.txt:encoding=utf-8,latin-1",
            f"news={r}/test.txt:docs=blank",  # one article per blank-line block
        ],
        [f"wiki={w}/valid.txt"],
        builtin=True,
        builtin_max_bytes=400_000,
        vocab_size=1024,
        workers=2,
    )
    m = result.manifest
    data = PreparedData.open(result.path)
    assert data.train_domains == ["fiction", "news", "code", "prose"]
    assert data.heldout_domains == ["wiki", "code_heldout", "prose_heldout"]
    encodings = {
        Path(f["path"]).name: f["encoding"] for f in m["domains"]["fiction"]["sources"][0]["inputs"]
    }
    assert encodings["chesterton-ball.txt"] == "latin-1"
    assert encodings["chesterton-brown.txt"] == "utf-8"
    # Reuters test split: 3019 articles (SOURCE.md), none longer than max_doc_bytes
    news = m["domains"]["news"]
    assert news["documents"] == 3019
    assert news["splits"]["train"]["documents"] + news["splits"]["val"]["documents"] == 3019
    for name, d in m["domains"].items():
        for split, s in d["splits"].items():
            tokens = data.tokens(name, split)
            assert s["tokens"] == len(tokens) > 1000
            assert int((tokens == data.eot_id).sum()) == s["documents"]
        # BPE of 1024 on English and code: between 1.5 and 6 bytes of text per token
        toks = sum(s["tokens"] for s in d["splits"].values())
        text = sum(s["text_bytes"] for s in d["splits"].values())
        assert 1.5 < text / toks < 6, (name, text / toks)
    # validation is capped at 512 KiB of text; wikitext valid.txt (1.1 MB) is cut to that
    assert 1 << 19 <= m["domains"]["wiki"]["splits"]["val"]["text_bytes"] < (1 << 19) + (1 << 15)
    # a decoded Reuters validation article is exactly a block of the source file
    off, toks = data.doc_offsets("news", "val"), data.tokens("news", "val")
    article = data.decode(toks[off[0] : off[1] - 1])
    blocks = text_to_docs((r / "test.txt").read_text(), "blank", 1 << 15)
    assert article in blocks
    assert m["builtin"]["python_version"] and m["domains"]["code"]["sources"][0]["inputs"]
