"""The study's results and report name the runs that diverged (issue 19 item 16): a run left out
of the table and the fits is listed with the trainer's message, in results.json's meta and in
the report's setup, also when `moelab report` rebuilds the report on its own."""

from __future__ import annotations

import json

import pytest

from _robust import (
    micro_study_config,
    run_cli,
    write_yaml,
)


@pytest.mark.slow
def test_diverged_runs_are_listed_in_results_and_report(tmp_path_factory, tmp_path, capsys):
    cfg = micro_study_config(tmp_path_factory)
    # lr 1e30: the first update makes the weights overflow; two non-finite steps stop the run.
    cfg["base"]["train"].update(max_nonfinite_in_row=2, warmup_steps=0)
    cfg["grid"] = {"model.n_experts": [0, 4], "train.lr": [1e-3, 1e30]}
    path = write_yaml(tmp_path / "study.yaml", cfg)
    out = tmp_path / "S"
    rc, _, err = run_cli(capsys, ["study", path, "--out", out])
    assert rc == 0, err
    records = {
        p.parent.name: json.loads(p.read_text())["message"]
        for p in (out / "runs").glob("*/diverged.json")
    }
    assert records and all("lr=1e+30" in name for name in records), records

    for rebuilt in (False, True):
        if rebuilt:  # the report command alone, from what is on disk
            rc, _, err = run_cli(capsys, ["report", out])
            assert rc == 0, err
        results = json.loads((out / "results.json").read_text())
        assert results["meta"]["diverged"] == records
        assert not {row["run"] for row in results["rows"]} & set(records)
        report = (out / "report.md").read_text()
        assert f"Diverged, left out of the table and the fits ({len(records)})" in report
        for name, message in records.items():
            assert f"`{name}` ({message})" in report


def test_no_diverged_runs_no_line(micro_study):
    out = micro_study
    assert json.loads((out / "results.json").read_text())["meta"]["diverged"] == {}
    assert "Diverged" not in (out / "report.md").read_text()
