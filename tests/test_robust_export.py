"""`moelab export` refuses bad input with one line and exit 2; --out is never half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
    snapshot,
    swap_in_checkpoints,
    truncate_weights_keeping_checksums,
)


def _export(run: Path, out: Path, *extra) -> list:
    return ["export", run, "--out", out, "--no-verify", *extra]


def test_positive_control(dense_run, tmp_path, capsys):
    before = snapshot(dense_run)
    rc, out, err = run_cli(capsys, _export(dense_run, tmp_path / "hf"))
    assert rc == 0 and "exported" in out, err
    assert (tmp_path / "hf" / "config.json").is_file()
    assert snapshot(dense_run) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temp folder left beside it


def test_missing_or_foreign_run(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    for run in (tmp_path / "nope", tmp_path / "mine"):
        expect_user_error(
            capsys, _export(run, tmp_path / "hf"), watch=[tmp_path], match=[r"run folder"]
        )


def test_out_that_is_taken(dense_run, hf_export, tmp_path, capsys):
    """A file, a folder of the user's, and a folder holding another export are all kept."""
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    shutil.copytree(hf_export, tmp_path / "previous_export")
    cases = {"a_file": r"not a folder", "mine": r"not empty", "previous_export": r"not empty"}
    for out, match in cases.items():
        expect_user_error(
            capsys,
            _export(dense_run, tmp_path / out),
            watch=[tmp_path, dense_run],
            match=[match, r"new or empty folder|not a folder"],
        )


def test_model_without_a_transformers_class(finished_run, tmp_path, capsys):
    """The paper's MoE has no stock transformers class: refused before anything is written."""
    expect_user_error(
        capsys,
        _export(finished_run, tmp_path / "hf"),
        watch=[tmp_path, finished_run],
        match=[r"cannot export", r"lm-eval adapter|moelab"],
    )


def test_step_that_does_not_exist(dense_run, tmp_path, capsys):
    expect_user_error(
        capsys,
        _export(dense_run, tmp_path / "hf", "--step", "3"),
        watch=[tmp_path, dense_run],
        match=[r"step 3"],
    )


def test_truncated_safetensors(dense_run, tmp_path, capsys):
    run = copy_run(dense_run, tmp_path / "run")
    truncate_weights_keeping_checksums(run)
    expect_user_error(
        capsys, _export(run, tmp_path / "hf"), watch=[tmp_path], match=[r"model\.safetensors"]
    )


def test_checkpoint_from_another_config(dense_run, finished_run, tmp_path, capsys):
    run = copy_run(dense_run, tmp_path / "run")
    swap_in_checkpoints(run, finished_run)
    expect_user_error(
        capsys,
        _export(run, tmp_path / "hf"),
        watch=[tmp_path],
        match=[r"model\.safetensors", r"fit"],
    )


def test_corrupt_or_missing_tokenizer(dense_run, tmp_path, capsys):
    run = copy_run(dense_run, tmp_path / "run")
    (run / "tokenizer.json").write_text("{ not a tokenizer")
    expect_user_error(
        capsys, _export(run, tmp_path / "hf"), watch=[tmp_path], match=[r"tokenizer\.json"]
    )
    (run / "tokenizer.json").unlink()
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("robust_prepared", "robust_gone"))
    expect_user_error(
        capsys, _export(run, tmp_path / "hf"), watch=[tmp_path], match=[r"tokenizer\.json"]
    )


def test_corrupt_run_config(dense_run, tmp_path, capsys):
    run = copy_run(dense_run, tmp_path / "run")
    (run / "config.yaml").write_text("model: {d_model: -3}\ndata: x\ntrain: {budget_steps: 1}\n")
    expect_user_error(capsys, _export(run, tmp_path / "hf"), watch=[tmp_path], match=[r"d_model"])


def test_bad_target(dense_run, tmp_path, capsys):
    expect_user_error(
        capsys,
        ["export", dense_run, "--to", "onnx", "--out", tmp_path / "x"],
        watch=[tmp_path],
        match=[r"--to", r"hf"],
    )


class SimulatedKill(BaseException):
    """Stands in for SIGKILL: not an Exception, so only ``finally`` blocks see it."""


def test_killed_export_leaves_no_out(dense_run, tmp_path, capsys, monkeypatch):
    """Killed after the weights and tokenizer were saved, during the logits check: --out does
    not appear (the export is built in a temporary folder, renamed when complete)."""
    import moelab.interop.hf_export as hf_export

    def die(*args, **kwargs):
        raise SimulatedKill

    monkeypatch.setattr(hf_export, "max_logit_diff", die)
    with pytest.raises(SimulatedKill):
        run_cli(capsys, ["export", dense_run, "--out", tmp_path / "hf"])
    assert list(tmp_path.iterdir()) == []


def test_out_that_cannot_be_created(dense_run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder\n")
    expect_user_error(
        capsys,
        _export(dense_run, tmp_path / "a_file" / "hf"),
        watch=[tmp_path, dense_run],
        match=[r"a_file"],
    )
