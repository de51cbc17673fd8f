"""`moelab prepare` through moelab.cli.main, in process."""

from __future__ import annotations

import pytest

from moelab.cli import main
from moelab.data import PreparedData


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(f"paragraph number {i} of the file" for i in range(60)) + "\n")
    return path


def test_prepare_then_rerun(text_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prepare", "--source", f"a={text_file}:docs=blank", "--out", str(out)]
    assert main([*argv, "--vocab-size", "300", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "a " in first and "train" in first and "val" in first
    assert PreparedData.open(out).train_domains == ["a"]
    assert main([*argv, "--vocab-size", "300"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--source", "a=/nonexistent/file.txt"], "no such file"),
        (["--source", "a"], "expected DOMAIN="),
        (["--source", "a={latin}"], "encoding=latin-1"),
        (["--source", "a={text}", "--vocab-size", "10"], "too small"),
        (["--source", "a={text}", "--tokenizer", "/nonexistent/tokenizer.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, words, text_file, tmp_path, capsys):
    latin = tmp_path / "l.txt"
    latin.write_bytes("d\u00e9j\u00e0 vu\n\nencore\n".encode("latin-1"))
    extra = [e.format(latin=latin, text=text_file) for e in extra]
    assert main(["prepare", *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "o").exists()
