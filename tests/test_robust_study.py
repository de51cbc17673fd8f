"""`moelab study` refuses bad input with one line and exit 2, and touches nothing on disk.

(A study killed part-way and re-run is tested in test_robust_study_crash.py.)
"""

from __future__ import annotations

import copy
import shutil

import pytest

from _robust import (
    DELETE,
    expect_user_error,
    fill,
    micro_study_config,
    set_dotted,
    write_yaml,
)

# (id, {dotted key: value}, regexes, known bug or None); every case fails before any training
CASES = [
    ("unknown-top-key", {"nmae": "x"}, [r"nmae", r"valid keys"], None),
    ("unknown-eval-key", {"eval.zero_shots": []}, [r"eval\.zero_shots"], None),
    ("unknown-fit-key", {"fit.boot": 3}, [r"fit\.boot"], None),
    ("grid-not-mapping", {"grid": [1, 2]}, [r"grid"], None),
    ("grid-value-not-list", {"grid": {"model.n_experts": 4}}, [r"grid\.model\.n_experts"], None),
    ("grid-empty-list", {"grid": {"model.n_experts": []}}, [r"grid\.model\.n_experts"], None),
    ("grid-bad-key", {"grid": {"model..x": [1]}}, [r"grid"], None),
    ("bad-frontier", {"fit.frontier": "hull"}, [r"fit\.frontier"], None),
    ("negative-bootstrap", {"fit.bootstrap": -1}, [r"fit\.bootstrap"], None),
    ("limit-zero", {"eval.limit": 0}, [r"eval\.limit"], None),
    ("shots-negative", {"eval.shots": -1}, [r"shots"], None),
    ("threads-zero", {"threads": 0}, [r"threads"], None),
    ("name-with-slash", {"name": "a/b"}, [r"name"], None),
    ("wrong-type", {"eval.ppl": "yes please"}, [r"eval\.ppl"], None),
    ("no-model", {"base.model": DELETE}, [r"base\.model"], None),
    ("vocab-below-16", {"data": {"vocab_size": 8}}, [r"vocab_size"], None),
    (
        "negative-budget",
        {"base.train.budget_steps": -4},
        [r"budget_steps"],
        None,
    ),
    (
        "top-k-above-experts",
        {"grid": {"model.n_experts": [0, 4]}, "base.model.top_k": 6},
        [r"top_k"],
        None,
    ),
    (
        "capacity-factor-zero",
        {"base.model.capacity_factor": 0},
        [r"capacity_factor"],
        None,
    ),
    (
        "unknown-run-key",
        {"base.train.learning_rate": 0.1},
        [r"train\.learning_rate"],
        None,
    ),
    (
        "prepared-missing",
        {"data": {"prepared": "{tmp}/no_data"}},
        [r"no_data", r"prepare"],
        None,
    ),
    (
        "source-missing",
        {"data": {"sources": {"a": "{tmp}/nope/*.txt"}, "vocab_size": 300}},
        [r"nope", r"no files match"],
        None,
    ),
    (
        "vocab-below-specials",
        {"data": {"builtin": True, "vocab_size": 100}},
        [r"vocab_size", r"too small"],
        None,
    ),
]


def _params():
    out = []
    for id_, changes, match, bug in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(changes, match, id=id_, marks=marks))
    return out


@pytest.mark.parametrize("changes, match", _params())
def test_bad_study_config(changes, match, tmp_path_factory, tmp_path, capsys):
    cfg = micro_study_config(tmp_path_factory)
    for key, value in changes.items():
        set_dotted(cfg, key, fill(value, tmp=tmp_path))
    write_yaml(tmp_path / "study.yaml", cfg)
    expect_user_error(
        capsys,
        ["study", tmp_path / "study.yaml", "--out", tmp_path / "out"],
        watch=[tmp_path],
        match=match,
    )


def test_bad_command_line(tmp_path_factory, tmp_path, capsys):
    write_yaml(tmp_path / "study.yaml", micro_study_config(tmp_path_factory))
    (tmp_path / "a_file").write_text("x\n")
    cases = [
        (["study", tmp_path / "missing.yaml", "--out", tmp_path / "o"], [r"missing\.yaml"]),
        (["study", tmp_path / "study.yaml", "--out", tmp_path / "a_file"], [r"not a folder"]),
        (
            ["study", tmp_path / "study.yaml", "--out", tmp_path / "o", "--set", "eval.limit"],
            [r"KEY=VALUE"],
        ),
        (
            ["study", tmp_path / "study.yaml", "--out", tmp_path / "o", "--set", "fit.x=1"],
            [r"fit\.x"],
        ),
    ]
    for argv, match in cases:
        expect_user_error(capsys, argv, watch=[tmp_path], match=match)


def test_out_holding_a_different_study_is_kept(micro_study, tmp_path_factory, tmp_path, capsys):
    study = shutil.copytree(micro_study, tmp_path / "study", symlinks=True)
    cfg = set_dotted(copy.deepcopy(micro_study_config(tmp_path_factory)), "base.train.lr", 5e-3)
    write_yaml(tmp_path / "other.yaml", cfg)
    expect_user_error(
        capsys,
        ["study", tmp_path / "other.yaml", "--out", study],
        watch=[tmp_path],
        match=[r"different config", r"train\.lr"],
    )


def test_out_holding_a_different_study_keeps_its_runs(
    micro_study, tmp_path_factory, tmp_path, capsys
):
    """No run folder, checkpoint or result of the old study is touched (study.yaml and
    plan.json are guarded by the test above)."""
    from _robust import snapshot

    study = shutil.copytree(micro_study, tmp_path / "study", symlinks=True)
    cfg = set_dotted(copy.deepcopy(micro_study_config(tmp_path_factory)), "base.train.lr", 5e-3)
    write_yaml(tmp_path / "other.yaml", cfg)
    keep = ["runs", "results.csv", "results.json", "fits.json", "report.md", "report.html"]
    before = {k: snapshot(study / k) for k in keep}
    from _robust import run_cli

    rc, _, err = run_cli(capsys, ["study", tmp_path / "other.yaml", "--out", study])
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert {k: snapshot(study / k) for k in keep} == before


def test_out_that_cannot_be_created(tmp_path_factory, tmp_path, capsys):
    write_yaml(tmp_path / "study.yaml", micro_study_config(tmp_path_factory))
    (tmp_path / "a_file").write_text("not a folder\n")
    expect_user_error(
        capsys,
        ["study", tmp_path / "study.yaml", "--out", tmp_path / "a_file" / "out"],
        watch=[tmp_path],
        match=[r"a_file"],
    )


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"base.train.budget_steps": -4}, [r"budget_steps"]),
        ({"grid": {"model.n_experts": [0, 4]}, "base.model.top_k": 6}, [r"top_k"]),
        ({"base.model.capacity_factor": 0}, [r"capacity_factor"]),
    ],
    ids=["negative-budget", "top-k-above-experts", "capacity-factor-zero"],
)
def test_bad_run_settings_with_plan(changes, match, tmp_path_factory, tmp_path, capsys):
    """`moelab study --plan` validates every run config and writes nothing."""
    cfg = micro_study_config(tmp_path_factory)
    for key, value in changes.items():
        set_dotted(cfg, key, value)
    write_yaml(tmp_path / "study.yaml", cfg)
    expect_user_error(
        capsys,
        ["study", tmp_path / "study.yaml", "--out", tmp_path / "out", "--plan"],
        watch=[tmp_path],
        match=match,
    )
