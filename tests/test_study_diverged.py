"""A study meets a run that diverges, or a run name no folder can have (issue 19, item 16).

One diverged run no longer aborts the study: it is recorded in RUN/diverged.json, left out of
the results (and listed), the other runs finish, and a rerun does not train it again. A run name
over the file name limit is refused before anything is written (it was an OSError traceback and
a half-made study folder).
"""

from __future__ import annotations

import json

import pytest

from _robust import (
    expect_user_error,
    micro_study_config,
    run_cli,
    write_yaml,
)


def test_run_name_over_the_limit_is_refused_up_front(tmp_path_factory, tmp_path, capsys):
    cfg = micro_study_config(tmp_path_factory)
    model = dict(cfg["base"]["model"], name="a" * 300)
    cfg["grid"] = {"model": [model]}
    path = write_yaml(tmp_path / "study.yaml", cfg)
    out = tmp_path / "S"
    for extra in ([], ["--plan"]):
        expect_user_error(
            capsys,
            ["study", path, "--out", out, *extra],
            watch=[tmp_path],
            match=[r"run name a+\.\.\. is 300 bytes", r"243"],
        )


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_diverged_run_is_recorded_and_the_study_goes_on(
    tmp_path_factory, tmp_path, capsys, workers
):
    cfg = micro_study_config(tmp_path_factory)
    # lr 1e30: the first update makes the weights overflow; two non-finite steps stop it.
    cfg["base"]["train"].update(max_nonfinite_in_row=2, warmup_steps=0)
    cfg["grid"] = {"model.n_experts": [0, 4], "train.lr": [1e-3, 1e30]}
    cfg["workers"] = workers
    path = write_yaml(tmp_path / "study.yaml", cfg)
    out = tmp_path / "S"
    rc, stdout, err = run_cli(capsys, ["study", path, "--out", out])
    assert rc == 0, err
    diverged = sorted(p.parent.name for p in (out / "runs").glob("*/diverged.json"))
    assert diverged and all("lr=1e+30" in name for name in diverged), diverged
    for name in diverged:
        rec = json.loads((out / "runs" / name / "diverged.json").read_text())
        assert rec["run"] == name and "non-finite" in rec["message"]
        assert f"{name} diverged (training stopped at step" in stdout
    assert f"({len(diverged)} diverged: " in stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    finished = {p.name for p in (out / "runs").iterdir() if p.is_dir()} - set(diverged)
    assert {r["run"] for r in rows} == finished and len(finished) == 4 - len(diverged) >= 2

    # A rerun does not train the diverged runs again (they would diverge the same way).
    marks = {n: (out / "runs" / n / "diverged.json").stat().st_mtime_ns for n in diverged}
    rc, stdout, err = run_cli(capsys, ["study", path, "--out", out])
    assert rc == 0, err
    assert f"{len(diverged)} of 4 runs diverged before and are skipped" in stdout
    assert {n: (out / "runs" / n / "diverged.json").stat().st_mtime_ns for n in diverged} == marks


def test_a_run_name_at_the_limit_gets_its_lock(tmp_path):
    """243 bytes (the limit) fit: the lock file and its guard beside the run folder have room."""
    from moelab.lock import FolderLock, lock_path
    from moelab.study.run.sweep import MAX_RUN_NAME_BYTES

    folder = tmp_path / ("r" * MAX_RUN_NAME_BYTES)
    with FolderLock(folder, "train"):
        assert lock_path(folder).is_file()
        guard = lock_path(folder).with_name(lock_path(folder).name + ".break")
        guard.touch()  # the longest name it may create
        guard.unlink()
    assert list(tmp_path.iterdir()) == []
