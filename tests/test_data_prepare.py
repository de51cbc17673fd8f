"""prepare -> folder -> PreparedData: round trip, manifest, idempotence, refusal of damage."""

from __future__ import annotations

import importlib
import json
import os
import random

import numpy as np
import pytest

from moelab.data import PreparedData, prepare
from moelab.data.sources import text_to_docs
from moelab.errors import MoelabError

WORDS = "the model routes each token to two experts while dense layers see all of them".split()


def _paragraphs(rng: random.Random, n: int, extra: str = "") -> str:
    paras = []
    for _ in range(n):
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
        paras.append(line + extra)
    return "\n\n".join(paras) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    (root / "prose").mkdir()
    for i in range(6):
        (root / "prose" / f"p{i}.txt").write_text(_paragraphs(rng, 30, " caf\u00e9 \u4e2d\u6587"))
    rows = [{"text": _paragraphs(rng, 3, " {x: 1}")} for _ in range(40)]
    (root / "code.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "held.txt").write_text(_paragraphs(rng, 20, " <|endoftext|> inside"))
    return root


def _prep(corpus, out, **kw):
    kw.setdefault("vocab_size", 400)
    kw.setdefault("max_doc_bytes", 2000)
    return prepare(
        out,
        [f"prose={corpus}/prose/*.txt", f"code={corpus}/code.jsonl"],
        [f"held={corpus}/held.txt"],
        **kw,
    )


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    return _prep(corpus, out)


def _decoded_docs(data: PreparedData, domain: str, split: str) -> list[str]:
    toks, off = data.tokens(domain, split), data.doc_offsets(domain, split)
    assert all(toks[off[i + 1] - 1] == data.eot_id for i in range(len(off) - 1))
    return [data.decode(toks[off[i] : off[i + 1] - 1]) for i in range(len(off) - 1)]


def test_round_trip_text_to_shards_to_text(prepared, corpus):
    data = PreparedData.open(prepared.path)
    assert data.train_domains == ["prose", "code"] and data.heldout_domains == ["held"]
    assert data.splits("held") == ["val"] and data.splits("prose") == ["train", "val"]
    # held-out: every document in order, so the file comes back exactly (incl. the literal
    # "<|endoftext|>" text, which must stay text and not become a boundary)
    held_text = (corpus / "held.txt").read_text()
    assert "".join(_decoded_docs(data, "held", "val")) == held_text
    assert data.num_docs("held", "val") == len(text_to_docs(held_text, "file", 2000))
    # training domains: train + val together are exactly the source documents
    expected = [
        d
        for i in range(6)
        for d in text_to_docs((corpus / "prose" / f"p{i}.txt").read_text(), "file", 2000)
    ]
    got = _decoded_docs(data, "prose", "train") + _decoded_docs(data, "prose", "val")
    assert sorted(got) == sorted(expected)
    assert data.decode(data.encode("na\u00efve \u4e2d")) == "na\u00efve \u4e2d"


def test_manifest_counts_match_the_arrays(prepared):
    m = prepared.manifest
    data = PreparedData.open(prepared.path)
    assert m["dtype"] == "uint16" and data.tokens("code", "train").dtype == np.uint16
    assert (m["tokenizer"]["eot_id"], m["tokenizer"]["pad_id"]) == (0, 1)
    assert data.vocab_size == data.tokenizer.get_vocab_size() <= 400
    for name, d in m["domains"].items():
        total_docs = 0
        for split, s in d["splits"].items():
            assert s["tokens"] == len(data.tokens(name, split)) > 0
            assert s["documents"] == len(data.doc_offsets(name, split)) - 1
            total_docs += s["documents"]
        assert total_docs == d["documents"]
        assert all(len(r["sha256"]) == 64 for src in d["sources"] for r in src["inputs"])
    # the validation split is capped: 5% of each training domain's text, at least one document
    for name in ("prose", "code"):
        s = m["domains"][name]["splits"]
        assert 0 < s["val"]["text_bytes"] <= 0.05 * m["domains"][name]["text_bytes"] + 2000


def test_rerun_is_a_no_op_and_other_settings_are_refused(prepared, corpus):
    before = {p.name: p.stat().st_mtime_ns for p in prepared.path.iterdir()}
    again = _prep(corpus, prepared.path)
    assert not again.created and again.manifest["fingerprint"] == prepared.manifest["fingerprint"]
    assert {p.name: p.stat().st_mtime_ns for p in prepared.path.iterdir()} == before
    with pytest.raises(MoelabError, match="holds a different preparation"):
        _prep(corpus, prepared.path, seed=1)


def test_changed_input_file_is_a_different_preparation(corpus, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(_paragraphs(random.Random(1), 30))
    prepare(tmp_path / "out", [f"a={src}"], vocab_size=300, max_doc_bytes=500)
    src.write_text(src.read_text() + "one more line\n")
    with pytest.raises(MoelabError, match="different preparation"):
        prepare(tmp_path / "out", [f"a={src}"], vocab_size=300, max_doc_bytes=500)


def test_output_folder_with_other_content_is_refused(corpus, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MoelabError, match="not a moelab prepared folder"):
        _prep(corpus, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_interrupted_run_leaves_nothing_behind(corpus, tmp_path, monkeypatch):
    # moelab.data.prepare is also the name of the function, so fetch the module itself
    prep_mod = importlib.import_module("moelab.data.prepare")

    calls = []

    def failing_write_split(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user hit Ctrl-C halfway
        return real(*args, **kw)

    real = prep_mod.write_split
    monkeypatch.setattr(prep_mod, "write_split", failing_write_split)
    with pytest.raises(KeyboardInterrupt):
        _prep(corpus, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_same_inputs_give_identical_folders(prepared, corpus, tmp_path):
    stale = tmp_path / ".again.tmp-999999999"  # left by a killed run (no such pid)
    stale.mkdir()
    again = _prep(corpus, tmp_path / "again")
    assert not stale.exists()
    for name in os.listdir(prepared.path):
        if name != "manifest.json":  # which differs only in its creation time
            assert (again.path / name).read_bytes() == (prepared.path / name).read_bytes(), name
    assert again.manifest["domains"] == prepared.manifest["domains"]


@pytest.fixture
def copy_of(prepared, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(prepared.path, dst)
    return dst


def test_truncated_shard_is_refused(copy_of):
    shard = copy_of / "prose.train.tokens.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(MoelabError, match="prose.train.tokens.bin has .* bytes.*truncated"):
        PreparedData.open(copy_of, verify=False)


def test_altered_shard_is_refused_by_checksum(copy_of):
    shard = copy_of / "code.val.tokens.bin"
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    PreparedData.open(copy_of, verify=False)  # sizes only: documented as not catching this
    with pytest.raises(MoelabError, match="code.val.tokens.bin does not match its checksum"):
        PreparedData.open(copy_of)


def test_missing_or_corrupt_manifest_and_tokenizer(copy_of):
    (copy_of / "tokenizer.json").write_text("{}")
    with pytest.raises(MoelabError, match="tokenizer.json"):
        PreparedData.open(copy_of, verify=False)
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(MoelabError, match="manifest.json is corrupt"):
        PreparedData.open(copy_of)
    with pytest.raises(MoelabError, match="does not exist"):
        PreparedData.open(copy_of / "nothing")


def test_user_tokenizer_reproduces_the_shards(prepared, corpus, tmp_path):
    redo = _prep(corpus, tmp_path / "redo", tokenizer=prepared.path / "tokenizer.json")
    assert redo.manifest["tokenizer"]["trained"] is False
    for name in ("prose.train", "code.val", "held.val"):
        a = (prepared.path / f"{name}.tokens.bin").read_bytes()
        assert a == (redo.path / f"{name}.tokens.bin").read_bytes()


@pytest.mark.slow
def test_large_vocabulary_uses_uint32(prepared, corpus, tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(prepared.path / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(65_300)])  # vocab > 65536
    tok.save(str(tmp_path / "big.json"))
    big = _prep(corpus, tmp_path / "big", tokenizer=tmp_path / "big.json")
    data = PreparedData.open(big.path)
    assert big.manifest["dtype"] == "uint32" and data.tokens("held", "val").dtype == np.uint32
    assert data.vocab_size > 1 << 16
    assert "".join(_decoded_docs(data, "held", "val")) == (corpus / "held.txt").read_text()


@pytest.mark.slow
def test_two_workers_give_identical_shards(prepared, corpus, tmp_path):
    two = _prep(corpus, tmp_path / "two", workers=2, tokenizer=prepared.path / "tokenizer.json")
    for name, d in two.manifest["domains"].items():
        for split, s in d["splits"].items():
            mine = prepared.manifest["domains"][name]["splits"][split]["files"]["tokens"]
            assert s["files"]["tokens"]["sha256"] == mine["sha256"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"vocab_size": 100}, "vocab_size 100 is too small"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"val_fraction": 1.5}, "val_fraction"),
    ],
)
def test_bad_settings(corpus, tmp_path, kwargs, words):
    with pytest.raises(MoelabError, match=words):
        _prep(corpus, tmp_path / "o", **kwargs)


def test_domain_errors(corpus, tmp_path):
    with pytest.raises(MoelabError, match="both as a training source and in heldout"):
        prepare(tmp_path / "o", [f"x={corpus}/held.txt"], [f"x={corpus}/code.jsonl"])
    one = tmp_path / "one.txt"
    one.write_text("a single short document\n")
    with pytest.raises(MoelabError, match="only 1 document"):
        prepare(tmp_path / "o", [f"x={one}"])
