"""`moelab report` rebuilds only from complete, current runs: study_eval.json files that are
stale or belong to another run are refused before anything is written; a finished run folder
outside the plan still joins the table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _robust import (
    expect_user_error,
    run_cli,
)


@pytest.fixture
def study_copy(micro_study, tmp_path) -> Path:
    return shutil.copytree(micro_study, tmp_path / "study", symlinks=True)


def _last_run(study: Path) -> Path:
    return sorted(p for p in (study / "runs").iterdir() if p.is_dir())[-1]


def _edit_eval(run_dir: Path, **changes) -> None:
    f = run_dir / "study_eval.json"
    ev = json.loads(f.read_text())
    ev.update(changes)
    f.write_text(json.dumps(ev))


def test_stale_evaluation_is_refused(study_copy, capsys):
    _edit_eval(_last_run(study_copy), eval_key="0000000000000000")
    expect_user_error(
        capsys,
        ["report", study_copy],
        watch=[study_copy],
        match=[r"study_eval\.json", r"other settings", rf"--out {study_copy}"],
    )


def test_evaluation_of_another_run_is_refused(study_copy, capsys):
    _edit_eval(_last_run(study_copy), run="someone-else")
    expect_user_error(
        capsys, ["report", study_copy], watch=[study_copy], match=[r"someone-else", r"delete it"]
    )


def test_finished_run_outside_the_plan_joins_the_table(study_copy, capsys):
    plan = json.loads((study_copy / "plan.json").read_text())
    left_out = plan.pop()["run"]
    (study_copy / "plan.json").write_text(json.dumps(plan))
    rc, _, err = run_cli(capsys, ["report", study_copy])
    assert rc == 0, err
    rows = json.loads((study_copy / "results.json").read_text())["rows"]
    assert rows[-1]["run"] == left_out


def test_an_upcycled_run_counts_the_dense_runs_compute(study_copy, dense_run, tmp_path, capsys):
    """The FLOPs columns of a run made by `moelab upcycle` add the dense run's training FLOPs
    (its config's upcycled_from section, as upcycle writes it) to every point of its curve."""
    import yaml

    from moelab.study.results.collect import read_records

    up = tmp_path / "up"
    rc, _, err = run_cli(capsys, ["upcycle", dense_run, "--experts", "4", "--out", up])
    assert rc == 0, err
    section = yaml.safe_load((up / "config.yaml").read_text())["upcycled_from"]
    before = {(p.run, p.step, p.branch): p for p in read_records(study_copy)[0]}
    moe = next(p.run for p in before.values() if p.family != "dense")
    cfg_file = study_copy / "runs" / moe / "config.yaml"
    cfg_file.write_text(
        yaml.safe_dump({**yaml.safe_load(cfg_file.read_text()), "upcycled_from": section})
    )
    after = read_records(study_copy)[0]
    assert section["train_flops"] > 0 and len(after) == len(before)
    for p in after:
        b = before[(p.run, p.step, p.branch)]
        extra = section["train_flops"] if p.run == moe else 0.0
        assert p.train_flops == b.train_flops + extra
        assert p.train_flops_spent == b.train_flops_spent + extra
        assert p.loss == b.loss
