"""`moelab generate` refuses bad input with one line and exit 2, and never touches the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
    write_corpus,
)


def _generate(run: Path, *extra) -> list:
    return ["generate", run, "--prompt", "the cat", "--max-tokens", "3", *extra]


def test_positive_control(finished_run, capsys):
    rc, out, err = run_cli(capsys, _generate(finished_run, "--temperature", "0"))
    assert rc == 0 and out.startswith("the cat"), err


SAMPLING_CASES = [
    ("temperature-negative", ["--temperature", "-1"], [r"temperature"]),
    ("top-p-zero", ["--top-p", "0"], [r"top-p"]),
    ("top-p-above-one", ["--top-p", "1.5"], [r"top-p"]),
    ("top-k-negative", ["--top-k", "-2"], [r"top-k"]),
    ("max-tokens-negative", ["--max-tokens", "-1"], [r"max-tokens"]),
    ("temperature-not-number", ["--temperature", "hot"], [r"temperature"]),
    ("step-missing", ["--step", "3"], [r"step 3", r"no valid checkpoint"]),
]


@pytest.mark.parametrize(
    "extra, match", [c[1:] for c in SAMPLING_CASES], ids=[c[0] for c in SAMPLING_CASES]
)
def test_bad_arguments_are_refused(extra, match, finished_run, capsys):
    expect_user_error(capsys, _generate(finished_run, *extra), watch=[finished_run], match=match)


def test_missing_or_foreign_run_folder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello\n")
    for run in (tmp_path / "nope", tmp_path / "notes", tmp_path / "notes" / "a.txt"):
        expect_user_error(capsys, _generate(run), watch=[tmp_path], match=[r"run folder"])


def test_corrupt_run_config(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "config.yaml").write_text("model: {n_layers: [\n")
    expect_user_error(capsys, _generate(run), watch=[tmp_path], match=[r"config\.yaml", r"YAML"])
    (run / "config.yaml").write_text("model: {n_layerz: 2}\ndata: x\ntrain: {budget_steps: 1}\n")
    expect_user_error(capsys, _generate(run), watch=[tmp_path], match=[r"n_layerz"])


def _truncate_all_weights(run: Path) -> None:
    for f in run.glob("checkpoints/step_*/model.safetensors"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_all_checkpoints_truncated(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    _truncate_all_weights(run)
    expect_user_error(
        capsys, _generate(run), watch=[tmp_path], match=[r"no valid checkpoint", r"truncated"]
    )


def test_truncated_weights_without_checksums(finished_run, tmp_path, capsys):
    """A truncated safetensors whose meta.json was rewritten to match (so only the safetensors
    reader can notice): still one clean line."""
    import hashlib
    import json

    run = copy_run(finished_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    step = run / "checkpoints" / "step_00000004"
    f = step / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    meta = json.loads((step / "meta.json").read_text())
    data = f.read_bytes()
    meta["files"]["model.safetensors"] = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (step / "meta.json").write_text(json.dumps(meta))
    expect_user_error(
        capsys, _generate(run), watch=[tmp_path], match=[r"model\.safetensors", r"weights"]
    )


def test_checkpoint_from_another_config(finished_run, dense_run, tmp_path, capsys):
    """The MoE run's checkpoints replaced by the dense run's (checksums intact)."""
    run = copy_run(finished_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(dense_run / "checkpoints", run / "checkpoints")
    expect_user_error(
        capsys, _generate(run), watch=[tmp_path], match=[r"model\.safetensors", r"do not fit"]
    )


def test_corrupt_tokenizer(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    expect_user_error(capsys, _generate(run), watch=[tmp_path], match=[r"tokenizer\.json"])


def test_tokenizer_of_another_vocabulary(finished_run, tmp_path, capsys):
    from moelab.data import prepare

    src = write_corpus(tmp_path / "src", 40, seed=4)
    prepare(tmp_path / "big", sources=[f"a={src}/*.txt"], vocab_size=1000)
    run = copy_run(finished_run, tmp_path / "run")
    shutil.copyfile(tmp_path / "big" / "tokenizer.json", run / "tokenizer.json")
    prompt = " ".join(["the horse runs fast over the green hill"] * 3)
    argv = ["generate", run, "--prompt", prompt, "--max-tokens", "2"]
    expect_user_error(capsys, argv, watch=[run], match=[r"tokenizer", r"vocab"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda(finished_run, capsys):
    expect_user_error(
        capsys,
        _generate(finished_run, "--device", "cuda"),
        watch=[finished_run],
        match=[r"cuda", r"--device cpu"],
    )


def test_unknown_device(finished_run, capsys):
    expect_user_error(
        capsys, _generate(finished_run, "--device", "tpu"), watch=[finished_run], match=[r"tpu"]
    )


def test_run_and_data_are_untouched(shared_data, finished_run, capsys):
    """Neither the run nor the data folder it came from is ever written by generate."""
    from _robust import snapshot

    data, run = shared_data, finished_run
    before = snapshot(data), snapshot(run)
    rc, _, err = run_cli(capsys, _generate(run, "--seed", "3"))
    assert rc == 0, err
    assert (snapshot(data), snapshot(run)) == before
