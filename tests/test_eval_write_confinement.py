"""`eval` and `finetune` write only inside the run folder (issue 19, item 8): a symlinked or
dangling RUN_DIR/eval is refused in one line, and a result file that is a link is replaced, not
written through."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _robust import copy_run, expect_user_error, run_cli, snapshot


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    out = copy_run(finished_run, tmp_path / "run")
    if (out / "eval").exists():
        shutil.rmtree(out / "eval")
    return out


ARGS = ["--ppl", "--max-tokens", "32"]


def test_eval_folder_linked_outside_is_refused(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "eval").symlink_to(outside, target_is_directory=True)
    expect_user_error(
        capsys,
        ["eval", run, *ARGS],
        watch=[outside, run],
        match=[r"eval is a link to .*outside", r"replace the link"],
    )
    expect_user_error(
        capsys,
        ["finetune", run, "--task", "x.jsonl"],
        watch=[outside, run],
        match=[r"eval is a link to .*outside"],
    )


def test_dangling_eval_link_is_refused_and_its_target_not_made(run, tmp_path, capsys):
    target = tmp_path / "elsewhere" / "eval"
    (run / "eval").symlink_to(target, target_is_directory=True)
    expect_user_error(capsys, ["eval", run, *ARGS], watch=[run], match=[r"outside the run"])
    assert not target.exists() and not target.parent.exists()


def test_eval_folder_linked_inside_the_run_is_fine(run, capsys):
    (run / "results").mkdir()
    (run / "eval").symlink_to(run / "results", target_is_directory=True)
    rc, out, err = run_cli(capsys, ["eval", run, *ARGS])
    assert rc == 0, err
    assert (run / "results" / "ppl.json").is_file()


def test_a_result_file_linked_outside_is_replaced_not_written_through(run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (run / "eval").mkdir()
    (run / "eval" / "ppl.json").symlink_to(victim)
    before = snapshot(victim)
    rc, out, err = run_cli(capsys, ["eval", run, *ARGS])
    assert rc == 0, err
    assert snapshot(victim) == before
    assert not (run / "eval" / "ppl.json").is_symlink()
    assert '"perplexity"' in (run / "eval" / "ppl.json").read_text()


def test_dangling_eval_link_inside_the_run_is_refused_before_the_work(run, capsys):
    """A link to a missing folder inside the run passed the check, the evaluation ran, and only
    the final write failed ("File exists"): refused first now (reviewer's finding)."""
    (run / "eval").symlink_to(run / "missing", target_is_directory=True)
    expect_user_error(capsys, ["eval", run, *ARGS], watch=[run], match=[r"does not exist"])
