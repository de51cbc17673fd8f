"""Cooldown branches under torchrun: two ranks give the branch rows (training loss reduced over
ranks, validation loss) and the main rows of one process, and the run after a branch is the
run without it."""

from __future__ import annotations

import pytest
import yaml

from moelab.train import load_run_config, read_metrics, train
from test_parallel_train import _raw, _torchrun, make_prepared, pytestmark  # noqa: F401


@pytest.mark.slow
def test_two_ranks_branch_rows_match_one_process(tmp_path):
    prepared = make_prepared(tmp_path)
    raw = _raw(prepared)
    raw["train"].update(budget_steps=12, schedule="wsd", cooldowns=2, checkpoint_every=6)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    train(load_run_config(raw), tmp_path / "one", progress=False)
    _torchrun(config, tmp_path / "two")
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    branches_one = [r for r in one if r.get("branch")]
    branches_two = [r for r in two if r.get("branch")]
    assert [(r["fork_step"], r["step"]) for r in branches_one] == [(2, 3), (5, 6)]
    assert [(r["fork_step"], r["step"]) for r in branches_two] == [(2, 3), (5, 6)]
    for a, b in zip(branches_one, branches_two):
        assert a["annealed"] and b["annealed"]
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)  # the whole batch's, not rank 0's
        for dom, v in a["val_loss"].items():
            assert abs(v - b["val_loss"][dom]) < 1e-4
    main_one = {r["step"]: r["loss"] for r in one if not r.get("branch")}
    main_two = {r["step"]: r["loss"] for r in two if not r.get("branch")}
    assert main_one.keys() == main_two.keys()
    assert all(abs(main_one[s] - main_two[s]) < 1e-4 for s in main_one)
