"""Globs, links and duplicate inputs (issue 19, item 5): `**` never enters a symlinked folder
(one loop turned 2 files into 82 inputs, two loops never returned), a file's content is read
once (a copy in the same domain is skipped, in another domain refused), and a file name with
`[`, `]` or `:` can be given literally."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from _robust import copy_run, expect_user_error, run_cli
from moelab.data import prepare
from moelab.data.globbing import expand
from moelab.data.sources import parse_source_spec, read_source
from moelab.errors import MoelabError

TEXT = "the cat sleeps near the river.\n\nthe dog barks at the barn door.\n\n" * 30


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (not hang) when the body loops: SIGALRM raises in the main thread."""

    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def looped_corpus(root: Path) -> Path:
    """corpus/a.txt, corpus/sub/b.txt, and two links back up: sub/up -> corpus, sub/here -> sub."""
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text(TEXT)
    (corpus / "sub" / "b.txt").write_text(TEXT.upper())
    (corpus / "sub" / "up").symlink_to(corpus, target_is_directory=True)
    (corpus / "sub" / "here").symlink_to(corpus / "sub", target_is_directory=True)
    return corpus


def test_double_star_does_not_enter_symlinked_folders(tmp_path):
    corpus = looped_corpus(tmp_path)
    with deadline(20):
        found = expand(f"{corpus}/**/*.txt")
    assert found == [f"{corpus}/a.txt", f"{corpus}/sub/b.txt"]
    assert expand(f"{corpus}/**") == sorted(
        f"{corpus}/{p}" for p in ("a.txt", "sub", "sub/b.txt", "sub/here", "sub/up")
    )  # the links are listed, not entered
    # a link the user names is followed
    assert expand(f"{corpus}/sub/up/**/a.txt") == [f"{corpus}/sub/up/a.txt"]
    # hidden folders are not walked by **, as with glob
    (corpus / ".git").mkdir()
    (corpus / ".git" / "c.txt").write_text("x")
    assert expand(f"{corpus}/**/*.txt") == found


def test_prepare_reads_each_file_once_through_links_and_copies(tmp_path):
    corpus = looped_corpus(tmp_path)
    (corpus / "copy_of_a.txt").write_text(TEXT)  # same bytes, another name
    with deadline(60):
        result = prepare(
            tmp_path / "out", sources=[f"t={corpus}/**/*.txt"], vocab_size=300, progress=False
        )
    (src,) = result.manifest["domains"]["t"]["sources"]
    read = [r for r in src["inputs"] if "duplicate_of" not in r]
    skipped = [r for r in src["inputs"] if "duplicate_of" in r]
    assert sorted(Path(r["path"]).name for r in read) == ["a.txt", "b.txt"]
    assert [Path(r["path"]).name for r in skipped] == ["copy_of_a.txt"]
    assert skipped[0]["duplicate_of"] == str(corpus / "a.txt")
    docs = sum(r["documents"] for r in read)
    assert result.manifest["domains"]["t"]["documents"] == docs


def test_one_content_in_two_domains_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "same.txt").write_text(TEXT)
    seen: dict = {}
    read_source(parse_source_spec(f"train={tmp_path}/a.txt"), 1000, seen)
    with pytest.raises(MoelabError, match=r"same\.txt has the same bytes as .*a\.txt.*'train'"):
        read_source(parse_source_spec(f"held={tmp_path}/same.txt"), 1000, seen)


def test_prepare_refuses_a_file_in_a_training_and_a_heldout_domain(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT)
    expect_user_error(
        capsys,
        [
            "prepare",
            "--source",
            f"t={tmp_path}/a.txt",
            "--heldout",
            f"h={tmp_path}/*.txt",
            "--out",
            tmp_path / "out",
            "--vocab-size",
            "300",
        ],
        watch=[tmp_path],
        match=[r"a\.txt", r"two domains"],
    )


def test_names_with_brackets_and_colons_are_literal(tmp_path, capsys):
    (tmp_path / "file[1].txt").write_text(TEXT)
    (tmp_path / "file1.txt").write_text("other text entirely\n\nand more of it\n")
    (tmp_path / "notes:v2.txt").write_text(TEXT.upper())
    spec = parse_source_spec(f"a={tmp_path}/file[1].txt")
    (rec,) = read_source(spec, 1000).records
    assert rec["path"] == str(tmp_path / "file[1].txt")  # before: file1.txt, silently
    spec = parse_source_spec(f"a={tmp_path}/notes:v2.txt")  # before: unknown encoding 'v2.txt'
    assert spec.location == f"{tmp_path}/notes:v2.txt" and spec.options == ()
    assert read_source(spec, 1000).docs[0].startswith("THE CAT")
    # options after a name with a colon, and glob.escape's [[] for a literal bracket
    spec = parse_source_spec(f"a={tmp_path}/notes:v2.txt:latin-1:docs=blank")
    assert spec.location == f"{tmp_path}/notes:v2.txt"
    assert dict(spec.options) == {"encoding": "latin-1", "docs": "blank"}
    spec = parse_source_spec(f"a={tmp_path}/file[[]*")
    assert [Path(r["path"]).name for r in read_source(spec, 1000).records] == ["file[1].txt"]
    # a word that is no option and no encoding is part of the path, and the error says so
    with pytest.raises(MoelabError, match=r"no such file .*file1\.txt:latn-1.*part of the path"):
        read_source(parse_source_spec(f"a={tmp_path}/file1.txt:latn-1"), 1000)


def test_eval_reads_a_bracketed_name_literally(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")  # eval writes RUN/eval
    (tmp_path / "file[1].txt").write_text(TEXT)
    (tmp_path / "file1.txt").write_text("other text entirely\n")
    rc, out, err = run_cli(
        capsys, ["eval", run, "--ppl", tmp_path / "file[1].txt", "--max-tokens", "64", "--json"]
    )
    assert rc == 0, err
    (row,) = json.loads(out)["results"][0]["domains"]
    assert row["name"] == "file[1].txt"
    assert os.path.basename(row["origin"]) == "file[1].txt"


def test_an_empty_file_in_two_domains_is_not_a_shared_document(tmp_path):
    """Empty files (a placeholder, an empty LICENSE matched by two globs) hold no document: the
    same empty bytes in a training and a held-out domain are no leak (reviewer's finding)."""
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.txt").write_text("")
        (tmp_path / d / f"{d}.txt").write_text(TEXT + d)
    seen: dict = {}
    read_source(parse_source_spec(f"train={tmp_path}/d1/*.txt"), 1000, seen)
    held = read_source(parse_source_spec(f"held={tmp_path}/d2/*.txt"), 1000, seen)
    assert len(held.docs) >= 1


def test_double_star_reaches_a_hidden_folder_the_pattern_names(tmp_path):
    """`data/**/.cache/*.txt` matched with glob(recursive=True) before and matched nothing with
    the link-safe walk (reviewer's finding); `**` alone still skips hidden folders, as glob."""
    from moelab.data.globbing import expand

    (tmp_path / "a" / ".cache").mkdir(parents=True)
    (tmp_path / "a" / ".cache" / "x.txt").write_text("x")
    (tmp_path / "a" / "y.txt").write_text("y")
    got = expand(f"{tmp_path}/**/.cache/*.txt")
    assert got == [f"{tmp_path}/a/.cache/x.txt"]
    assert expand(f"{tmp_path}/**/*.txt") == [f"{tmp_path}/a/y.txt"]
