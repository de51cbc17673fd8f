"""Sources: spec parsing, what a document is, encodings and JSONL schema errors."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moelab.data.sources import (
    SourceSpec,
    parse_source_spec,
    read_source,
    split_long,
    text_to_docs,
)
from moelab.errors import MoelabError


def test_parse_spec_options_and_encoding_shorthand():
    s = parse_source_spec("news=data/*.txt:latin-1:docs=blank")
    assert s == SourceSpec("news", "data/*.txt", (("docs", "blank"), ("encoding", "latin-1")))
    h = parse_source_spec("wiki=hf:Salesforce/wikitext:config=wikitext-2-raw-v1:split=validation")
    assert h.is_hf and h.location == "hf:Salesforce/wikitext"
    assert h.option("config") == "wikitext-2-raw-v1" and h.option("field") is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ("nodomain", "expected"),
        ("1x=a.txt", "domain name"),
        ("a=b.txt:colour=red", "unknown or empty option"),
        ("a=b.txt:docs=page", "docs must be"),
        ("a=b.txt:encoding=klingon", "unknown encoding"),
    ],
)
def test_parse_spec_errors(bad, words):
    with pytest.raises(MoelabError, match=words):
        parse_source_spec(bad)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab \n\u00e9\u4e2d", max_size=400), st.integers(4, 64))
def test_split_long_is_lossless_and_bounded(text, max_bytes):
    pieces = split_long(text, max_bytes)
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= max_bytes for p in pieces)


def test_doc_modes():
    text = "title\nline two\n\n  \npara two\n\n\npara three\n"
    assert text_to_docs(text, "file", 1000) == [text]
    assert text_to_docs(text, "blank", 1000) == ["title\nline two", "para two", "para three"]
    assert text_to_docs(text, "line", 1000) == ["title", "line two", "para two", "para three"]
    # long files are cut at blank lines, and the pieces still add up to the file
    pieces = text_to_docs(text, "file", 20)
    assert "".join(pieces).strip() == text.strip() and len(pieces) > 1


def test_latin1_needs_its_encoding(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(MoelabError) as e:
        read_source(parse_source_spec(f"news={path}"), 1000)
    msg = str(e.value)
    assert str(path) in msg and "encoding=latin-1" in msg and "\n" not in msg
    docs = read_source(parse_source_spec(f"news={path}:latin-1"), 1000).docs
    assert docs == ["caf\u00e9 cr\u00e8me\n"]


def test_encoding_fallback_list_and_crlf(tmp_path):
    (tmp_path / "a.txt").write_bytes("na\u00efve\r\nline\r\n".encode())
    (tmp_path / "b.txt").write_bytes("na\u00efve\n".encode("latin-1"))
    ds = read_source(parse_source_spec(f"x={tmp_path}/*.txt:encoding=utf-8,latin-1"), 1000)
    assert ds.docs == ["na\u00efve\nline\n", "na\u00efve\n"]
    assert [r["encoding"] for r in ds.records] == ["utf-8", "latin-1"]
    assert all(len(r["sha256"]) == 64 for r in ds.records)


def test_jsonl_rows_are_documents(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "one"}, {"text": "  "}, {"body": {"text": "nested"}, "text": "two"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_source(parse_source_spec(f"j={path}"), 1000).docs == ["one", "two"]
    nested = tmp_path / "n.jsonl"
    nested.write_text(json.dumps({"body": {"text": "deep"}}) + "\n")
    assert read_source(parse_source_spec(f"j={nested}:field=body.text"), 1000).docs == ["deep"]


@pytest.mark.parametrize(
    "lines, words",
    [
        (['{"text": "ok"}', '{"content": "x"}'], r":2: no text field 'text' \(found: content\)"),
        (['{"text": 5}'], r":1: field 'text' is int, not a string"),
        (['{"text": "ok"}', "{broken"], r":2: not valid JSON"),
        (['["text"]'], r":1: no text field 'text'"),
    ],
)
def test_jsonl_schema_errors_name_file_line_and_field(tmp_path, lines, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MoelabError, match=str(path) + words):
        read_source(parse_source_spec(f"j={path}"), 1000)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(MoelabError, match="no files match"):
        read_source(parse_source_spec(f"a={tmp_path}/*.txt"), 1000)
    with pytest.raises(MoelabError, match="is a folder"):
        read_source(parse_source_spec(f"a={tmp_path}"), 1000)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A private datasets cache: tests never write into the user's ~/.cache/huggingface.
    ``datasets`` reads the variable at import, so its config attribute is set as well."""
    datasets = pytest.importorskip("datasets", reason="the 'datasets' package is not installed")
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_hf_source_fails_fast_in_one_line(hf_cache):
    spec = parse_source_spec("w=hf:moelab-test/does-not-exist-7f3a:split=train")
    t0 = time.monotonic()
    with pytest.raises(MoelabError) as e:
        read_source(spec, 1000)
    assert time.monotonic() - t0 < 20  # offline: no retry loop
    assert "does-not-exist-7f3a" in str(e.value) and "\n" not in str(e.value)


def test_hf_source_reads_a_local_dataset_folder(tmp_path, hf_cache):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": "first row"}, {"text": ""}, {"text": "second row"}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = read_source(parse_source_spec(f"w=hf:{folder}:split=train"), 1000)
    assert ds.docs == ["first row", "second row"]
    assert ds.records[0]["rows"] == 3 and ds.records[0]["split"] == "train"
    with pytest.raises(MoelabError, match="no column 'body'"):
        read_source(parse_source_spec(f"w=hf:{folder}:field=body"), 1000)
    assert any(hf_cache.iterdir())  # the dataset was cached here, not in the user's cache
