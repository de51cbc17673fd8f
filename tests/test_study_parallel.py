"""A study on many devices and on a cluster (issue 16 item 6): device sets per job, the torchrun
launch of a run on several processes (2 gloo processes on CPU), and the Slurm array that
`moelab study --emit slurm DIR` writes, checked with `bash -n` and one array task run locally.

(`--jobs 2` giving the same results table as `--jobs 1` is in tests/test_study_repro.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from _robust import expect_user_error, micro_study_config, run_cli, write_yaml
from moelab.errors import MoelabError
from moelab.study.plan.config import job_threads
from moelab.study.run.launch import device_sets, train_command


def test_device_sets_one_per_job():
    assert device_sets([], None) == []
    assert device_sets(["0,1", "2,3"], None) == [["0", "1"], ["2", "3"]]
    assert device_sets(["0,1", "2,3"], 2) == [["0", "1"], ["2", "3"]]
    assert device_sets(["0-7"], 4) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert device_sets(["0-3"], None) == [["0", "1", "2", "3"]]  # one set: one job on four
    for specs, jobs, match in [
        (["0-3"], 3, "do not split into 3"),
        (["0,1", "2"], 3, "2 device sets for --jobs 3"),
        (["0,1", "1,2"], None, "device 1 is in two sets"),
        (["gpu0"], None, "expected CUDA device indices"),
        (["3-1"], None, "runs backwards"),
    ]:
        with pytest.raises(MoelabError, match=match):
            device_sets(specs, jobs)


def test_threads_are_divided_among_jobs():
    from moelab.study.plan.config import StudyConfig, usable_cores

    base = {"model": "dense-cpu-0.5m"}
    assert job_threads(1) == usable_cores() and job_threads(10**6) == 1
    assert StudyConfig(base=base, workers=2).validate().threads == max(1, usable_cores() // 2)
    assert StudyConfig(base=base, workers=2, threads=3).validate().threads == 3  # as given
    assert StudyConfig(base=base).validate().threads is None  # one job: torch's default


def test_the_study_threads_train_each_run_unless_it_sets_its_own(tmp_path):
    """The trainer sets train.threads while a run trains, so the study's count goes there."""
    from moelab.study.plan.config import StudyConfig
    from moelab.study.run.sweep import build_plan

    base = {"model": "dense-cpu-0.5m", "train": {"budget_tokens": 4096}}
    per_model = {"moe-cpu-0.5m": {"train.threads": 2}}
    grid = {"model": ["dense-cpu-0.5m", "moe-cpu-0.5m"]}
    cfg = StudyConfig(base=base, grid=grid, per_model=per_model, threads=3).validate()
    plan = build_plan(cfg, tmp_path / "S", measure=False)
    assert [p.run_config.train.threads for p in plan] == [3, 2]


def test_one_device_set_per_worker(tmp_path):
    from moelab.study.plan.config import StudyConfig
    from moelab.study.run.sweep import run_study

    cfg = StudyConfig(base={"model": "dense-cpu-0.5m"}, workers=2).validate()
    with pytest.raises(MoelabError, match="1 device sets for 2 workers"):
        run_study(cfg, tmp_path / "S", devices=[["0"]])
    assert not (tmp_path / "S").exists()


def test_train_command_is_torchrun_around_moelab_train(tmp_path):
    cmd = train_command(tmp_path / "c.yaml", tmp_path / "runs" / "r", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]  # = the torchrun program
    assert cmd[3:] == [
        "--standalone",  # a free rendezvous port: several jobs share a node
        "--nproc-per-node=4",
        "-m",
        "moelab",
        "train",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "runs" / "r"),
        "--no-progress",
    ]


def _micro(tmp_path_factory, tmp_path):
    cfg = micro_study_config(tmp_path_factory)
    return write_yaml(tmp_path / "study.yaml", cfg), cfg


def test_bad_flags_are_one_line(tmp_path_factory, tmp_path, capsys):
    path, _ = _micro(tmp_path_factory, tmp_path)
    out = tmp_path / "S"
    cases = [
        (["--jobs", "0"], [r"--jobs: must be >= 1"]),
        (["--devices", "0-3", "--jobs", "3"], [r"4 devices do not split into 3"]),
        (["--emit", "pbs", tmp_path / "x"], [r"--emit pbs", r"slurm"]),
        (["--emit", "slurm", tmp_path / "x", "--jobs", "2"], [r"--jobs and --devices"]),
        (["--procs-per-run", "2"], [r"--procs-per-run: with --emit or --only"]),
        (["--sbatch=--time=1:00:00"], [r"--sbatch: only with --emit"]),
        (["--only", "nosuch"], [r"no prepared data|not a run"]),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--devices", "0"], [r"CUDA is not available"]))
    for extra, match in cases:
        expect_user_error(
            capsys, ["study", path, "--out", out, *extra], watch=[tmp_path], match=match
        )


def _emit(tmp_path_factory, tmp_path, capsys, *extra):
    path, cfg = _micro(tmp_path_factory, tmp_path)
    out, dest = tmp_path / "S", tmp_path / "slurm"
    argv = ["study", path, "--out", out, "--emit", "slurm", dest, *extra]
    rc, stdout, err = run_cli(capsys, argv)
    assert rc == 0, err
    return out, dest, cfg


def test_emitted_slurm_scripts_parse_and_one_task_trains_exactly_its_run(
    tmp_path_factory, tmp_path, capsys
):
    out, dest, _ = _emit(tmp_path_factory, tmp_path, capsys, "--sbatch=--time=01:00:00")
    scripts = [dest / "array.sbatch", dest / "report.sbatch", dest / "submit.sh"]
    for s in scripts:
        assert os.access(s, os.X_OK)
        check = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    array = (dest / "array.sbatch").read_text()
    plan = [r["run"] for r in json.loads((out / "plan.json").read_text())]
    assert "#SBATCH --array=0-1" in array and "#SBATCH --time=01:00:00" in array
    assert "--dependency=afterany:$job" in (dest / "submit.sh").read_text()
    assert f"-m moelab report {out}" in (dest / "report.sbatch").read_text()
    assert not (out / "runs").exists()  # set up, nothing trained

    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "OMP_NUM_THREADS": "1"}
    task = subprocess.run(
        ["bash", str(dest / "array.sbatch")], env=env, capture_output=True, text=True, timeout=600
    )
    assert task.returncode == 0, task.stderr
    assert f"training {plan[1]}" in task.stdout
    assert [p.name for p in (out / "runs").iterdir()] == [plan[1]]  # its run, and only it
    run = out / "runs" / plan[1]
    assert (run / "done.json").is_file() and (run / "study_eval.json").is_file()
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["model"]["n_experts"] == 4  # grid model.n_experts: [0, 4], task 1 is the MoE
    # resubmitting: a finished task returns at once; an index past the array is one line
    again = subprocess.run(["bash", str(dest / "array.sbatch")], env=env, capture_output=True)
    assert again.returncode == 0 and b"already trained and evaluated" in again.stdout
    env["SLURM_ARRAY_TASK_ID"] = "2"
    past = subprocess.run(["bash", str(dest / "array.sbatch")], env=env, capture_output=True)
    assert past.returncode == 2 and b"this array has runs 0-1" in past.stderr


@pytest.mark.slow
def test_a_run_on_two_processes_is_launched_with_torchrun(tmp_path_factory, tmp_path, capsys):
    """`--only RUN --procs-per-run 2` on CPU: torchrun starts 2 gloo ranks of `moelab train`;
    the checkpoint says so and the study evaluates the run afterwards."""
    out, dest, cfg = _emit(tmp_path_factory, tmp_path, capsys, "--procs-per-run", "2")
    assert "--procs-per-run 2" in (dest / "array.sbatch").read_text()
    assert "#SBATCH --gres=gpu:2" in (dest / "array.sbatch").read_text()
    dense = json.loads((out / "plan.json").read_text())[0]["run"]
    rc, stdout, err = run_cli(
        capsys,
        ["study", out / "study.yaml", "--out", out, "--only", dense, "--procs-per-run", "2"],
    )
    assert rc == 0, err
    assert f"training {dense}" in stdout and "on 2 processes (torchrun)" in stdout
    run = out / "runs" / dense
    steps = sorted((run / "checkpoints").glob("step_*"))
    meta = json.loads((steps[-1] / "meta.json").read_text())
    assert meta["world"] == 2
    assert (run / "study_eval.json").is_file()
    assert (out / "configs" / f"{dense}.yaml").is_file()  # what torchrun's ranks read
