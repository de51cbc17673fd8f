"""`moelab eval` and `finetune` say which checkpoint step they used (issue 19 items 3, 13).

The newest checkpoint of a copied run is damaged, so the commands fall back to an older one:
the step they print must be that older one, read from its own meta.json, and it is printed
with the result only (a refusal keeps its single stderr line: see test_robust_eval)."""

from __future__ import annotations

import json
from pathlib import Path

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
)


def _newest_broken(run: Path) -> int:
    """Flip bytes in the newest checkpoint's weights (its checksum no longer matches); returns
    the step of the checkpoint that remains valid."""
    steps = sorted((run / "checkpoints").glob("step_*"))
    assert len(steps) >= 2, steps
    weights = steps[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)
    weights.write_bytes(bytes(data))
    return json.loads((steps[-2] / "meta.json").read_text())["step"]


def _task(folder: Path) -> Path:
    rows = [
        {"context": f"the cat {i}", "choices": ["sat down", "flew off"], "label": i % 2}
        for i in range(12)
    ]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (folder / "t.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    return folder / "t.jsonl"


def test_eval_prints_the_step_it_fell_back_to(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    older = _newest_broken(run)
    rc, out, err = run_cli(capsys, ["eval", run, "--ppl", "--max-tokens", "32"])
    assert rc == 0, err
    assert f"{run}: checkpoint step {older}" in out.splitlines()
    assert "not valid" in err  # the skipped newer checkpoint is named too

    rc, out, err = run_cli(capsys, ["eval", run, "--ppl", "--max-tokens", "32", "--json"])
    assert rc == 0, err
    doc = json.loads(out)  # stdout stays one JSON document
    assert doc["checkpoint"]["step"] == older
    assert all(r["checkpoint"]["step"] == older for r in doc["results"])


def test_eval_refusal_after_loading_stays_one_line(finished_run, tmp_path, capsys):
    """The step is said with the result: a refusal raised once the model is loaded (a
    --context beyond the model's) has no 'checkpoint step' line before it."""
    run = copy_run(finished_run, tmp_path / "run")
    line = expect_user_error(
        capsys, ["eval", run, "--ppl", "--context", "100000"], watch=[run], match=["context"]
    )
    assert "exceeds the model" in line  # raised after loading, by the perplexity code


def test_finetune_prints_the_step_it_used(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    older = _newest_broken(run)
    argv = ["finetune", run, "--task", _task(tmp_path), "--epochs", "1", "--lrs", "1e-3"]
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0, err
    assert f"{run}: checkpoint step {older}" in out.splitlines()


def test_generate_prints_the_step_it_fell_back_to(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    older = _newest_broken(run)
    rc, out, err = run_cli(
        capsys, ["generate", run, "--prompt", "the", "--max-tokens", "4", "--seed", "1"]
    )
    assert rc == 0, err
    assert out.startswith("the")  # stdout is the text alone
    assert f"{run}: checkpoint step {older}" in err.splitlines()
