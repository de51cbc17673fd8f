"""Hand-edited run files (issue 19, item 12): one clear line or a clean recovery, never a
traceback. meta.json's data_fingerprint not a string, a metrics.jsonl row that is a list or has
a null step: refused before the run folder is written. done.json as a list or missing keys: not
trusted, so the run is finished again from its final checkpoint and done.json rewritten."""

from __future__ import annotations

import json
import shutil

import pytest

from _robust import (
    copy_run,
    expect_user_error,
    run_cli,
)


def test_meta_data_fingerprint_not_a_string(unfinished, capsys):
    meta_file = unfinished / "checkpoints" / "step_00000004" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["data_fingerprint"] = 12345
    meta_file.write_text(json.dumps(meta))
    expect_user_error(
        capsys,
        ["train", "--out", unfinished, "--no-progress"],
        watch=[unfinished],
        match=[r"meta\.json", r"data_fingerprint is not a string"],
    )


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda rows: rows + ["[1, 2]"], id="row-is-a-list"),
        pytest.param(
            lambda rows: rows[:-1] + [rows[-1].replace('"step": 4', '"step": null')], id="null-step"
        ),
    ],
)
def test_metrics_row_edited_by_hand(unfinished, capsys, edit):
    path = unfinished / "metrics.jsonl"
    rows = path.read_text().splitlines()
    assert '"step": 4' in rows[-1]
    edited = edit(rows)
    path.write_text("\n".join(edited) + "\n")
    expect_user_error(
        capsys,
        ["train", "--out", unfinished, "--no-progress"],
        watch=[unfinished],
        match=[rf"metrics\.jsonl: line {len(edited)} is not a metrics row", r"integer step"],
    )


@pytest.mark.parametrize("content", [[1, 2], {"steps": 4}], ids=["list", "missing-keys"])
def test_done_json_edited_by_hand_is_rewritten(finished_run, tmp_path, capsys, content):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "done.json").write_text(json.dumps(content))
    rc, out, err = run_cli(capsys, ["train", "--out", run, "--no-progress"])
    assert rc == 0 and "Traceback" not in err, err
    assert "done.json is damaged; finishing the run again rewrites it" in err
    assert out.startswith("done: 4 steps")
    done = json.loads((run / "done.json").read_text())
    assert done["steps"] == 4 and done["tokens"] > 0


def test_report_with_a_done_json_that_is_a_list(micro_study, tmp_path, capsys):
    study = shutil.copytree(micro_study, tmp_path / "study", symlinks=True)
    run = sorted(p for p in (study / "runs").iterdir() if p.is_dir())[0]
    (run / "done.json").write_text("[1, 2]\n")
    rc, _, err = run_cli(capsys, ["report", study])
    assert rc == 0 and "Traceback" not in err, err
