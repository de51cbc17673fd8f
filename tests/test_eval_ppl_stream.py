"""`eval --ppl FILE`: text is read and tokenized in pieces, reading stops at --max-tokens, peak
memory does not grow with the file (issue 19, item 2), and the file goes through prepare's
reader: .gz decompressed, binary refused (item 9)."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
)
from moelab.data.tokenizer import load_tokenizer
from moelab.eval.perplexity import OUT_OF_DOMAIN, PplSource, evaluate_perplexity
from moelab.eval.text_source import read_tokens

LINES = [
    "The cat sat on the mat, and the dog sat on the log.",
    "  Caf\u00e9 au lait \u2014 d\u00e9j\u00e0 vu! Numbers: 12345 67.8",
    "",
    "a" * 700,  # a long word: no line break and no space to cut at
    "one two three " * 60,  # a long line: cut before a space
    "\tindented\ttabs\tand trailing spaces   ",
]


def text_of(n_bytes: int) -> str:
    """Varied text of about ``n_bytes`` UTF-8 bytes, made of whole lines."""
    block = "\n".join(f"{i}: {line}" for i, line in enumerate(LINES * 3)) + "\n"
    return block * max(1, n_bytes // len(block.encode("utf-8")))


@pytest.fixture(scope="module")
def run(finished_run, tmp_path_factory) -> Path:
    """A copy of the shared run: successful evaluations write RUN/eval, and the shared run is
    read-only for every robustness test (one copies it and puts a file at RUN/eval)."""
    return copy_run(finished_run, tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def tok(run):
    return load_tokenizer(run / "tokenizer.json")


@pytest.mark.parametrize("piece_chars", [64, 1000, 1 << 16])
def test_pieces_give_the_ids_of_the_whole_text(tmp_path, tok, piece_chars):
    text = text_of(40_000)
    path = tmp_path / "t.txt"
    path.write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8"))  # BOM, CRLF
    whole = tok.encode(text, add_special_tokens=False).ids
    ids, n_bytes = read_tokens(path, tok, piece_chars=piece_chars)
    assert ids.tolist() == whole
    assert n_bytes == len(text.encode("utf-8"))
    assert ids.dtype == np.uint16  # 2 bytes per kept token, not ~180 per input byte
    ids, n_bytes = read_tokens(path, tok, max_tokens=777, piece_chars=piece_chars)
    assert ids.tolist() == whole[:777]
    assert n_bytes == len(tok.decode(whole[:777]).encode("utf-8"))


def test_streamed_perplexity_equals_the_direct_computation(tmp_path, run, tok, capsys):
    """A 3 MB file with --max-tokens scores exactly the first tokens of the whole text."""
    text = text_of(3 << 20)
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    rc, out, err = run_cli(
        capsys, ["eval", run, "--ppl", tmp_path / "big.txt", "--max-tokens", "500", "--json"]
    )
    assert rc == 0, err
    (row,) = json.loads(out)["results"][0]["domains"]
    # the direct way on a small file: its whole text encoded at once, first 500 tokens
    ids = tok.encode(text[:20_000], add_special_tokens=False).ids[:500]
    from moelab.eval.runs import open_run

    opened = open_run(run, device="cpu")
    src = PplSource("x", np.asarray(ids), len(tok.decode(ids).encode()), OUT_OF_DOMAIN, "x")
    (direct,) = evaluate_perplexity(opened.model, [src], pad_id=0)["domains"]
    assert row["tokens"] == direct["tokens"] == 499
    assert row["bytes"] == direct["bytes"]
    assert row["loss"] == pytest.approx(direct["loss"], rel=1e-6)
    assert row["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-6)


# The peak resident set of this process's own memory (VmHWM). Not getrusage's ru_maxrss: Linux
# carries that over from the parent through fork and exec, so a child of a big pytest process
# would report pytest's size, and the test could never fail.
PEAK = """
import re, sys
from pathlib import Path
from moelab.cli import main
rc = main(sys.argv[1:])
hwm = re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
print("PEAK_KB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def peak_kb(argv: list) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *map(str, argv)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_the_file(tmp_path, run):
    """Before: ~180 bytes per input byte (the 20 MB file alone would need ~3.6 GB)."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(text_of(2 << 20), encoding="utf-8")
    big.write_text(text_of(20 << 20), encoding="utf-8")
    args = ["--max-tokens", "2000", "--device", "cpu", "--json"]
    peaks = [peak_kb(["eval", run, "--ppl", f, *args]) for f in (small, big)]
    assert peaks[1] - peaks[0] < 20_000, f"peak RSS {peaks} KB for 2 MB and 20 MB files"


def test_compressed_text_scores_as_the_text_and_binary_is_refused(tmp_path, run, capsys):
    """Item 9: gzip of a text scored 3,806 where the text scored 238; now it is decompressed."""
    text = text_of(30_000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    (tmp_path / "t.txt.xz").write_bytes(lzma.compress(text.encode("utf-8")))
    rows = {}
    for name in ("t.txt", "t.txt.gz", "t.txt.xz"):
        rc, out, err = run_cli(
            capsys, ["eval", run, "--ppl", tmp_path / name, "--max-tokens", "300", "--json"]
        )
        assert rc == 0, err
        (rows[name],) = json.loads(out)["results"][0]["domains"]
    for name in ("t.txt.gz", "t.txt.xz"):
        for key in ("tokens", "bytes", "loss"):
            assert rows[name][key] == rows["t.txt"][key], (name, key)
    # a compressed file without its suffix, a binary file, a damaged archive: one line each
    (tmp_path / "packed.txt").write_bytes(gzip.compress(text.encode("utf-8")))
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(text.encode("utf-8"))[:200])
    watch = [run / "eval", tmp_path]
    for name, match in [
        ("packed.txt", [r"packed\.txt", r"binary", r"\.gz"]),
        ("weights.bin", [r"weights\.bin", r"binary"]),
        ("cut.txt.gz", [r"cut\.txt\.gz", r"truncated or corrupt"]),
    ]:
        expect_user_error(capsys, ["eval", run, "--ppl", tmp_path / name], watch=watch, match=match)


def test_prepare_refuses_a_binary_source(tmp_path, capsys):
    """The same reader serves prepare: a binary file is refused even with :encoding=latin-1
    (which decodes any byte), before anything is written."""
    (tmp_path / "blob.dat").write_bytes(b"text\0" * 100)
    expect_user_error(
        capsys,
        [
            "prepare",
            "--source",
            f"a={tmp_path / 'blob.dat'}:encoding=latin-1",
            "--out",
            tmp_path / "out",
            "--vocab-size",
            "300",
        ],
        watch=[tmp_path],
        match=[r"blob\.dat", r"binary"],
    )


def test_a_tokenizer_that_cannot_be_cut_gets_the_whole_text(tmp_path):
    """A SentencePiece-style tokenizer (Metaspace: a prefix space on every encode call, as the
    Llama, Mixtral and XGLM tokenizers `moelab import` brings) gives other ids when the text is
    cut into pieces: such a tokenizer is read in one piece (reviewer's finding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from moelab.data.tokenizer import can_cut_documents

    text = text_of(20_000)
    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    sp.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    assert not can_cut_documents(sp)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    whole = sp.encode(text, add_special_tokens=False).ids
    cut = [
        i for p in (text[:5000], text[5000:]) for i in sp.encode(p, add_special_tokens=False).ids
    ]
    assert cut != whole  # what cutting would have given
    ids, _ = read_tokens(path, sp, piece_chars=64)
    assert ids.tolist() == whole
