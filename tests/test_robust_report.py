"""`moelab report` refuses bad input with one line and exit 2, and never rewrites a study's
table, fits or report from damaged inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from _robust import (
    expect_user_error,
    run_cli,
    snapshot,
)


@pytest.fixture
def study_copy(micro_study, tmp_path) -> Path:
    return shutil.copytree(micro_study, tmp_path / "study", symlinks=True)


def test_positive_control(study_copy, capsys):
    """A rebuild from intact runs succeeds, rewrites the outputs (so the snapshots below can
    see a rewrite) and reproduces the same table."""
    table = json.loads((study_copy / "results.json").read_text())["rows"]
    before = snapshot(study_copy)
    rc, _, err = run_cli(capsys, ["report", study_copy])
    assert rc == 0, err
    assert snapshot(study_copy)["results.csv"][2] != before["results.csv"][2]  # mtime
    rows = json.loads((study_copy / "results.json").read_text())["rows"]
    assert rows == table


def test_missing_empty_or_foreign_folder(finished_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x\n")
    run = finished_run  # a training run is not a study
    cases = [
        (tmp_path / "nope", r"not a folder"),
        (tmp_path / "file", r"not a folder"),
        (tmp_path / "empty", r"moelab study"),
        (run, r"moelab study"),
    ]
    for folder, match in cases:
        expect_user_error(capsys, ["report", folder], watch=[tmp_path, run], match=[match])


def _run_dirs(study: Path) -> list[Path]:
    return sorted(p for p in (study / "runs").iterdir() if p.is_dir())


def _damage(study: Path, what: str) -> None:
    run = _run_dirs(study)[1]
    if what == "study-yaml-garbage":
        (study / "study.yaml").write_text("name: [unclosed\n")
    elif what == "plan-json-garbage":
        (study / "plan.json").write_text('[{"run": ')
    elif what == "study-eval-garbage":
        (run / "study_eval.json").write_text('{"eval_key": ')
    elif what == "study-eval-wrong-schema":
        (run / "study_eval.json").write_text('{"eval_key": "x"}\n')
    elif what == "metrics-garbage":
        (run / "metrics.jsonl").write_text("not json at all\n")
    elif what == "metrics-truncated-line":
        text = (run / "metrics.jsonl").read_text()
        (run / "metrics.jsonl").write_text(text[: len(text) - 40])
    elif what == "run-config-garbage":
        (run / "config.yaml").write_text("model: {n_layers: [\n")
    elif what == "run-config-unknown-key":
        (run / "config.yaml").write_text(
            (run / "config.yaml").read_text().replace("n_layers:", "n_layerz:")
        )
    elif what == "done-json-missing":
        (run / "done.json").unlink()


DAMAGE = [
    ("study-yaml-garbage", [r"study\.yaml"], None),
    ("plan-json-garbage", [r"plan\.json"], None),
    ("study-eval-garbage", [r"study_eval\.json"], None),
    ("study-eval-wrong-schema", [r"study_eval\.json"], None),
    ("metrics-garbage", [r"metrics\.jsonl"], None),
    ("metrics-truncated-line", [r"metrics\.jsonl"], None),
    ("run-config-garbage", [r"config\.yaml"], None),
    ("run-config-unknown-key", [r"n_layerz"], None),
    ("done-json-missing", [r"done\.json|not finished|rerun"], None),
]


def _params():
    out = []
    for id_, match, bug in DAMAGE:
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(id_, match, id=id_, marks=marks))
    return out


@pytest.mark.parametrize("damage, match", _params())
def test_damaged_study_is_refused_and_kept(damage, match, study_copy, capsys):
    """Every finished output (results.csv/json, fits.json, report.md/html, plots) stays as it
    was: a report is never rebuilt from damaged or partial inputs."""
    _damage(study_copy, damage)
    expect_user_error(capsys, ["report", study_copy], watch=[study_copy], match=match)


def test_readme_snippet_prints_the_markdown_block(study_copy, capsys):
    """`--readme-snippet` rebuilds the report, prints the snippet (and only it) on stdout, the
    status line on stderr, and leaves the same text in readme_snippet.md."""
    from moelab.study.analysis.snippet import BEGIN, END

    rc, out, err = run_cli(capsys, ["report", study_copy, "--readme-snippet"])
    assert rc == 0, err
    assert out.startswith(BEGIN) and out.rstrip().endswith(END)
    assert "report:" in err and "report:" not in out
    assert (study_copy / "readme_snippet.md").read_text() == out
    assert re.search(r"^#+ Headline speedups", out, re.MULTILINE), out
    rows = json.loads((study_copy / "results.json").read_text())["rows"]
    finals = {r["run"] for r in rows if r["final"]}
    assert finals and all(re.search(rf"^\| {re.escape(n)} \|", out, re.M) for n in finals), out
    fits = json.loads((study_copy / "fits.json").read_text())
    assert fits["frontier"] in ("envelope", "annealed", "final", "all")
    assert "headline" in fits["metrics"]["loss_in_domain"]
