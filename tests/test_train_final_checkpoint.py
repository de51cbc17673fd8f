"""The finished run's last step is what readers load, and they say which step that is.

Issue 19, item 3: a run whose final updates were not finite (lr 1000: every update after the
second is skipped) saved no final checkpoint, yet done.json called it complete and
generate/eval/export silently used step 2. Item 13: a checkpoint's step came from its folder's
name, so a folder renamed by hand passed for the newest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from _robust import (
    run_cli,
    shared_prepared,
    shared_run,
    tiny_run_config,
    write_yaml,
)
from moelab.errors import MoelabError
from moelab.train import load_model
from moelab.train.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return shared_prepared(tmp_path_factory)


def test_run_ending_in_skipped_updates_saves_its_final_step(prepared, tmp_path, capsys):
    raw = tiny_run_config(
        prepared, moe=False, budget_steps=6, lr=1000.0, warmup_steps=0, max_nonfinite_in_row=100
    )
    cfg = write_yaml(tmp_path / "run.yaml", raw)
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, ["train", str(cfg), "--out", str(out), "--no-progress"])
    assert rc == 0, err
    assert "step 6: non-finite loss or gradient" in err  # the reproduction still reproduces
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 6 and done["checkpoint_step"] == 6
    assert done["final_skipped_in_row"] >= 1
    assert [c.step for c in list_checkpoints(out)][-1] == 6

    _, _, meta = load_model(out)
    assert meta["step"] == 6
    rc, stdout, err = run_cli(capsys, ["export", str(out), "--out", tmp_path / "hf", "--no-verify"])
    assert rc == 0, err
    assert stdout.startswith("exported step 6 as "), stdout


def test_step_comes_from_meta_not_the_folder_name(tmp_path_factory, tmp_path, caplog):
    run = shutil.copytree(shared_run(tmp_path_factory), tmp_path / "run")
    ckpts = run / "checkpoints"
    (ckpts / "step_00000002").rename(ckpts / "step_00000099")  # the older one, renamed
    assert [c.step for c in list_checkpoints(run)] == [2, 4]
    with caplog.at_level(logging.INFO, logger="moelab"):  # the library logs, a command shows it
        _, _, meta = load_model(run, announce=True)
    assert meta["step"] == 4
    assert f"{run}: loaded checkpoint step_00000004 (step 4)" in caplog.text
    _, _, meta = load_model(run, step=2)  # found by its real step, under whatever name
    assert meta["step"] == 2
    with pytest.raises(MoelabError, match="no valid checkpoint at step 99"):
        load_model(run, step=99)
