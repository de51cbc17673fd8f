"""`moelab prepare` refuses bad input with one line and exit 2, and touches nothing on disk."""

from __future__ import annotations

import json
import shutil

import pytest

from _robust import expect_user_error, run_cli, snapshot, unreadable_file, write_corpus


@pytest.fixture
def corpus(tmp_path):
    """Inputs for the cases: a good corpus plus one bad file of each kind."""
    write_corpus(tmp_path / "good", 12)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "latin.txt").write_bytes("d\u00e9j\u00e0 vu\n\nencore une fois\n".encode("latin-1"))
    (tmp_path / "utf16.txt").write_bytes("hello world\n\nagain\n".encode("utf-16"))
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "one_doc.txt").write_text("just one paragraph here\n", encoding="utf-8")
    rows = [{"body": f"document {i} " * 5} for i in range(6)]
    (tmp_path / "wrong_field.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (tmp_path / "not_json.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (tmp_path / "not_string.jsonl").write_text('{"text": "fine"}\n{"text": 42}\n')
    (tmp_path / "list_rows.jsonl").write_text('["a", "b"]\n["c"]\n')
    (tmp_path / "tok_garbage.json").write_text("{ this is not a tokenizer")
    (tmp_path / "tok_list.json").write_text("[1, 2, 3]")
    unreadable_file(tmp_path, "secret.txt")
    import gzip

    packed = gzip.compress(("one paragraph of text\n\n" * 200).encode())
    (tmp_path / "truncated.txt.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "garbage.txt.gz").write_bytes(b"\x1f\x8b garbage")
    (tmp_path / "garbage.txt.bz2").write_bytes(b"BZh91AY&SY garbage")
    (tmp_path / "garbage.txt.xz").write_bytes(b"not xz at all")
    return tmp_path


GOOD = "a={tmp}/good/*.txt"

# (id, extra arguments, regexes the one stderr line must contain[, known bug])
CASES = [
    ("missing-file", ["--source", "a={tmp}/nope.txt"], [r"no such file", r"nope\.txt"]),
    ("missing-glob", ["--source", "a={tmp}/nowhere/*.txt"], [r"no files match"]),
    ("missing-heldout", ["--source", GOOD, "--heldout", "h={tmp}/gone.txt"], [r"gone\.txt"]),
    ("folder-not-file", ["--source", "a={tmp}/good"], [r"is a folder", r"\*\.txt"]),
    ("gzip-garbage", ["--source", "a={tmp}/garbage.txt.gz"], [r"cannot read", r"garbage"]),
    ("bzip2-garbage", ["--source", "a={tmp}/garbage.txt.bz2"], [r"cannot read", r"garbage"]),
    ("gzip-truncated", ["--source", "a={tmp}/truncated.txt.gz"], [r"truncated"]),
    ("xz-garbage", ["--source", "a={tmp}/garbage.txt.xz"], [r"garbage"]),
    ("heldout-only", ["--heldout", GOOD, "--no-builtin"], [r"no training domain", r"--source"]),
    ("unreadable-file", ["--source", "a={tmp}/secret.txt"], [r"cannot read"]),
    ("empty-file", ["--source", "a={tmp}/empty.txt"], [r"no text"]),
    ("blank-file", ["--source", "a={tmp}/blank.txt"], [r"no text"]),
    ("empty-folder-glob", ["--source", "a={tmp}/emptydir/*.txt"], [r"no files match"]),
    ("one-document", ["--source", "a={tmp}/one_doc.txt"], [r"too few", r"add text"]),
    ("latin1-as-utf8", ["--source", "a={tmp}/latin.txt"], [r"not valid utf-8", r"latin-1"]),
    ("utf16-as-utf8", ["--source", "a={tmp}/utf16.txt"], [r"not valid utf-8", r"encoding"]),
    ("binary-as-utf8", ["--source", "a={tmp}/binary.txt"], [r"not valid utf-8"]),
    ("unknown-encoding", ["--source", "a={tmp}/latin.txt:encoding=klingon"], [r"klingon"]),
    ("jsonl-wrong-field", ["--source", "a={tmp}/wrong_field.jsonl"], [r"'text'", r"field="]),
    ("jsonl-bad-json", ["--source", "a={tmp}/not_json.jsonl"], [r":2:", r"not valid json"]),
    ("jsonl-not-string", ["--source", "a={tmp}/not_string.jsonl"], [r":2:", r"not a string"]),
    ("jsonl-list-rows", ["--source", "a={tmp}/list_rows.jsonl"], [r":1:", r"field"]),
    ("spec-no-equals", ["--source", "{tmp}/good/doc000.txt"], [r"expected DOMAIN="]),
    ("spec-bad-domain", ["--source", "9lives={tmp}/good/*.txt"], [r"must start with a letter"]),
    ("spec-unknown-option", ["--source", GOOD + ":colour=red"], [r"colour", r"allowed"]),
    ("spec-bad-docs-mode", ["--source", GOOD + ":docs=page"], [r"docs must be"]),
    ("source-and-heldout", ["--source", GOOD, "--heldout", GOOD], [r"both"]),
    ("vocab-below-specials", ["--source", GOOD, "--vocab-size", "2"], [r"too small", r"258"]),
    ("vocab-257", ["--source", GOOD, "--vocab-size", "257"], [r"too small"]),
    ("vocab-negative", ["--source", GOOD, "--vocab-size", "-5"], [r"too small"]),
    ("val-fraction-zero", ["--source", GOOD, "--val-fraction", "0"], [r"--val-fraction"]),
    ("val-fraction-one", ["--source", GOOD, "--val-fraction", "1.5"], [r"--val-fraction"]),
    ("max-doc-bytes-zero", ["--source", GOOD, "--max-doc-bytes", "0"], [r"--max-doc-bytes"]),
    ("workers-zero", ["--source", GOOD, "--workers", "0"], [r"workers"]),
    ("vocab-not-int", ["--source", GOOD, "--vocab-size", "lots"], [r"vocab-size"]),
    ("tokenizer-missing", ["--source", GOOD, "--tokenizer", "{tmp}/no.json"], [r"not exist"]),
    ("tokenizer-garbage", ["--source", GOOD, "--tokenizer", "{tmp}/tok_garbage.json"], [r"valid"]),
    ("tokenizer-wrong-json", ["--source", GOOD, "--tokenizer", "{tmp}/tok_list.json"], [r"valid"]),
    (
        "tokenizer-unreadable",
        ["--source", GOOD, "--tokenizer", "{tmp}/secret.txt"],
        [r"tokenizer"],
    ),
]


def _params():
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case[3])] if len(case) > 3 else []
        out.append(pytest.param(case[1], case[2], id=case[0], marks=marks))
    return out


@pytest.mark.parametrize("extra, match", _params())
def test_bad_input_is_refused_cleanly(extra, match, corpus, capsys):
    argv = ["prepare", *[a.format(tmp=corpus) for a in extra], "--out", corpus / "out"]
    expect_user_error(capsys, [*argv, "--no-progress"], watch=[corpus], match=match)


def test_tokenizer_without_end_of_document_token(corpus, capsys):
    """A user's tokenizer.json lacking any end-of-document token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(corpus / "no_eot.json"))
    argv = ["prepare", "--source", GOOD.format(tmp=corpus), "--tokenizer", corpus / "no_eot.json"]
    expect_user_error(
        capsys,
        [*argv, "--out", corpus / "out"],
        watch=[corpus],
        match=[r"end-of-document", r"special token"],
    )


@pytest.fixture
def prepared(corpus, capsys):
    """``corpus/out`` holding a finished preparation of the good corpus."""
    argv = ["prepare", "--source", GOOD.format(tmp=corpus), "--vocab-size", "300"]
    rc, _, err = run_cli(capsys, [*argv, "--out", corpus / "out", "--no-progress"])
    assert rc == 0, err
    return argv


def test_out_holding_a_different_preparation_is_kept(prepared, corpus, capsys):
    argv = [*prepared, "--out", corpus / "out"]
    expect_user_error(
        capsys,
        [*argv[:-4], "--vocab-size", "280", "--out", corpus / "out"],
        watch=[corpus],
        match=[r"different preparation", r"another --out"],
    )
    # other inputs (one more document) into the same folder
    (corpus / "good" / "extra.txt").write_text("one more document about the owl\n")
    expect_user_error(capsys, argv, watch=[corpus], match=[r"different preparation"])


def test_out_holding_other_files_or_a_file(corpus, capsys):
    good = ["prepare", "--source", GOOD.format(tmp=corpus), "--vocab-size", "300"]
    (corpus / "mine").mkdir()
    (corpus / "mine" / "notes.txt").write_text("my own notes\n")
    expect_user_error(
        capsys,
        [*good, "--out", corpus / "mine"],
        watch=[corpus],
        match=[r"not a moelab prepared folder", r"another --out"],
    )
    (corpus / "a_file").write_text("not a folder\n")
    expect_user_error(
        capsys, [*good, "--out", corpus / "a_file"], watch=[corpus], match=[r"not a folder"]
    )


@pytest.mark.parametrize("damage", ["truncate-shard", "alter-tokenizer", "corrupt-manifest"])
def test_rerun_into_a_damaged_preparation_is_refused(damage, prepared, corpus, capsys):
    """Same inputs again, but the folder was damaged since: refused, nothing rewritten."""
    out = corpus / "out"
    if damage == "truncate-shard":
        shard = next(out.glob("a.train.tokens.bin"))
        shard.write_bytes(shard.read_bytes()[:-6])
        match = [r"truncated", r"prepare again"]
    elif damage == "alter-tokenizer":
        tok = out / "tokenizer.json"
        tok.write_text(tok.read_text().replace('"<|pad|>"', '"<|PAD|>"'))
        match = [r"tokenizer\.json", r"checksum"]
    else:
        (out / "manifest.json").write_text('{"format": "moelab-prepared-data", "form')
        match = [r"manifest\.json", r"prepare again"]
    expect_user_error(capsys, [*prepared, "--out", out], watch=[corpus], match=match)


def test_shard_from_a_different_tokenizer_is_refused(prepared, corpus, capsys):
    """Swap in the same split prepared with another vocabulary: the manifest's checksums catch
    it, so the folder is neither reused nor overwritten."""
    argv = ["prepare", "--source", GOOD.format(tmp=corpus), "--vocab-size", "280"]
    rc, _, err = run_cli(capsys, [*argv, "--out", corpus / "other", "--no-progress"])
    assert rc == 0, err
    name = "a.train.tokens.bin"
    shutil.copyfile(corpus / "other" / name, corpus / "out" / name)
    expect_user_error(
        capsys,
        [*prepared, "--out", corpus / "out"],
        watch=[corpus],
        match=[name.replace(".", r"\."), r"prepare again"],
    )


def test_successful_rerun_changes_nothing(prepared, corpus, capsys):
    """The positive control for the snapshot: an identical re-run leaves every byte and mtime."""
    before = snapshot(corpus)
    rc, out, _ = run_cli(capsys, [*prepared, "--out", corpus / "out"])
    assert rc == 0 and "up to date" in out
    assert snapshot(corpus) == before


class SimulatedKill(BaseException):
    """Stands in for SIGKILL: not an Exception, so only ``finally`` blocks see it."""


def test_killed_prepare_leaves_nothing_and_reruns_identically(corpus, capsys, monkeypatch):
    """Killed while writing the second shard: no --out folder appears (the output is built
    under a temporary name); the half-written temporary folder a real kill would leave is
    removed by the re-run, whose shards and tokenizer equal those of an uninterrupted run."""
    import importlib

    # (moelab.data re-exports the function prepare, which hides the module of the same name)
    prepare_module = importlib.import_module("moelab.data.prepare")

    argv = ["prepare", "--source", GOOD.format(tmp=corpus), "--vocab-size", "300"]
    rc, _, err = run_cli(capsys, [*argv, "--out", corpus / "reference", "--no-progress"])
    assert rc == 0, err

    original = prepare_module.write_split
    calls = {"n": 0}

    def write_then_die(folder, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            (folder / "half.tokens.bin").write_bytes(b"\x01" * 7)
            raise SimulatedKill
        return original(folder, *args, **kwargs)

    out = corpus / "out"
    with monkeypatch.context() as m:
        m.setattr(prepare_module, "write_split", write_then_die)
        with pytest.raises(SimulatedKill):
            run_cli(capsys, [*argv, "--out", out, "--no-progress"])
    assert not out.exists()
    # What a real kill leaves: the temporary folder, named after a pid that cannot be alive
    # (Linux pids are at most 2**22).
    leftover = corpus / f".out.tmp-{2**22 + 1}"
    leftover.mkdir()
    (leftover / "a.train.tokens.bin").write_bytes(b"\x02" * 11)

    rc, _, err = run_cli(capsys, [*argv, "--out", out, "--no-progress"])
    assert rc == 0, err
    assert not leftover.exists(), "the killed run's temporary folder was not cleaned up"
    ref, got = snapshot(corpus / "reference"), snapshot(out)
    assert set(got) == set(ref)
    for name in got:
        if name not in (".", "manifest.json"):
            assert got[name][3] == ref[name][3], name  # same bytes (sha256)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["fingerprint"]
        == json.loads((corpus / "reference/manifest.json").read_text())["fingerprint"]
    )


def test_out_that_cannot_be_created(corpus, capsys):
    (corpus / "a_file").write_text("not a folder\n")
    argv = ["prepare", "--source", GOOD.format(tmp=corpus), "--vocab-size", "300"]
    expect_user_error(
        capsys, [*argv, "--out", corpus / "a_file" / "out"], watch=[corpus], match=[r"a_file"]
    )
