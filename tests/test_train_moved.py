"""A moved data, run or study folder resumes (issue 19 item 4): the data is identified by its
fingerprint, not by its path, and a study run stores its data folder relative to itself.

An interrupted run is a finished one with its done.json and every checkpoint after step 2
removed: exactly what a kill right after the step-2 checkpoint leaves (metrics.jsonl rows past
the checkpoint are cut by the trainer on resume, as after a kill)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from _robust import (
    micro_study_config,
    results_csv_without_wall_times,
    run_cli,
    tiny_run_config,
    write_corpus,
    write_yaml,
)
from moelab.data import prepare
from moelab.train import read_metrics
from moelab.train.rundir import read_run_config


def _interrupt_after(run: Path, step: int) -> Path:
    """Leave ``run`` as a kill right after its checkpoint at ``step`` would; returns that
    checkpoint's folder."""
    (run / "done.json").unlink()
    (run / "study_eval.json").unlink(missing_ok=True)
    kept = None
    for ckpt in sorted((run / "checkpoints").glob("step_*")):
        if json.loads((ckpt / "meta.json").read_text())["step"] > step:
            shutil.rmtree(ckpt)
        else:
            kept = ckpt
    assert kept is not None
    return kept


def _trace(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(run)]


def _weights(run: Path) -> bytes:
    return (sorted((run / "checkpoints").glob("step_*"))[-1] / "model.safetensors").read_bytes()


@pytest.mark.parametrize("checkpoint_from", ["this version", "before data.dir left the hash"])
def test_moved_folder_resumes_to_the_same_result(tmp_path, capsys, checkpoint_from):
    """FOLDER/data and FOLDER/run (interrupted) move to another place; resuming with the data's
    new place gives the same losses and weights as a run that never moved or stopped. A
    checkpoint written before this change (its config_hash covered the old absolute data.dir)
    resumes too."""
    a = tmp_path / "a"
    data = a / "data"
    prepare(data, sources=[f"alpha={write_corpus(a / 'src', 40, seed=1)}/*.txt"], vocab_size=300)
    cfg = write_yaml(a / "run.yaml", tiny_run_config(data, moe=False, keep_last=10))
    for name in ("ref", "run"):
        rc, _, err = run_cli(capsys, ["train", cfg, "--out", a / name, "--no-progress"])
        assert rc == 0, err
    kept = _interrupt_after(a / "run", 2)
    if checkpoint_from != "this version":
        meta = json.loads((kept / "meta.json").read_text())
        meta["config_hash"] = read_run_config(a / "run").legacy_config_hash(str(data))
        (kept / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    b = tmp_path / "b"
    a.rename(b)
    # The old place is gone: one line says how to give the new one.
    rc, _, err = run_cli(capsys, ["train", "--out", b / "run", "--no-progress"])
    assert rc == 2 and len(err.splitlines()) == 1 and "--set data.dir=" in err, err

    resume = ["train", "--out", b / "run", "--set", f"data.dir={b / 'data'}", "--no-progress"]
    rc, _, err = run_cli(capsys, resume)
    assert rc == 0, err
    assert "resuming from checkpoint" in err
    assert _trace(b / "run") == _trace(b / "ref")
    assert _weights(b / "run") == _weights(b / "ref")
    assert read_run_config(b / "run").data.dir == str((b / "data").resolve())


def test_other_data_at_the_new_place_is_refused(tmp_path, capsys):
    """Identity by fingerprint: another prepared folder is not accepted as the moved one."""
    data = tmp_path / "data"
    prepare(data, sources=[f"alpha={write_corpus(tmp_path / 's1', 40, seed=1)}/*.txt"],
            vocab_size=300)  # fmt: skip
    other = tmp_path / "other"
    prepare(other, sources=[f"alpha={write_corpus(tmp_path / 's2', 40, seed=5)}/*.txt"],
            vocab_size=300)  # fmt: skip
    cfg = write_yaml(tmp_path / "run.yaml", tiny_run_config(data, moe=False, keep_last=10))
    rc, _, err = run_cli(capsys, ["train", cfg, "--out", tmp_path / "run", "--no-progress"])
    assert rc == 0, err
    _interrupt_after(tmp_path / "run", 2)
    argv = ["train", "--out", tmp_path / "run", "--set", f"data.dir={other}", "--no-progress"]
    rc, _, err = run_cli(capsys, argv)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "changed since this run started" in err or "differs" in err, err


def test_moved_study_resumes_to_the_same_results(tmp_path_factory, tmp_path, capsys):
    """A study that prepared its data into STUDY/data, interrupted in one run, moved whole and
    rerun with the same command at the new place, ends with the same results table as a study
    that never moved or stopped. Its runs store data.dir as ../../data."""
    raw = micro_study_config(tmp_path_factory)
    raw["data"] = {"sources": {"alpha": f"{write_corpus(tmp_path / 'src', 40, seed=1)}/*.txt"},
                   "vocab_size": 300}  # fmt: skip
    raw["base"]["train"]["keep_last"] = 10
    cfg = write_yaml(tmp_path / "study.yaml", raw)
    for name in ("ref", "s"):
        rc, _, err = run_cli(capsys, ["study", cfg, "--out", tmp_path / name])
        assert rc == 0, err
    runs = sorted((tmp_path / "s" / "runs").iterdir())
    stored = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert stored["data"]["dir"] == "../../data"
    _interrupt_after(runs[-1], 2)

    moved = tmp_path / "moved"
    (tmp_path / "s").rename(moved)
    rc, _, err = run_cli(capsys, ["study", cfg, "--out", moved])
    assert rc == 0, err
    assert "resuming from checkpoint" in err
    assert results_csv_without_wall_times(moved) == results_csv_without_wall_times(tmp_path / "ref")
    assert read_run_config(moved / "runs" / runs[0].name).data.dir == str(moved / "data")
    # a study run's stored config trains a new run elsewhere: its ../../data is relative to
    # the run folder holding it, not to the working directory (reviewer's finding)
    fresh = tmp_path / "elsewhere" / "fresh"
    args = ["train", moved / "runs" / runs[0].name / "config.yaml", "--out", fresh, "--steps", "2"]
    rc, _, err = run_cli(capsys, args)
    assert rc == 0, err
    assert read_run_config(fresh).data.dir == str(moved / "data")
