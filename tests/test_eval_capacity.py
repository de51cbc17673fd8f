"""Evaluations leave the model as they got it (issue 14, point 8): perplexity used to set every MoE
layer dropless and never restore it, so priming after it ignored the run's eval capacity factor.

One tiny MoE run is trained here with ``eval_capacity_factor: 1.0``; at that capacity its
routing drops assignments, so dropless and capacity-limited priming give different scores, and
a leaked capacity would show."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from _eval_models import train_eval_run
from moelab.eval.perplexity import evaluate_perplexity, run_perplexity, sources_from_prepared
from moelab.eval.priming import evaluate_task, run_priming
from moelab.eval.runs import open_run
from moelab.eval.tasks import get_task
from moelab.train.validation import evaluation_state, moe_layers, set_capacity

WORDS = "the cat sat on a mat dog ran to park bird sang in tree she poured milk".split()


def capacity_run(root: Path) -> Path:
    """In ``root``: the eval test run (:func:`train_eval_run`) with every FFN an MoE and eval
    capacity factor 1.0, and a 4-choice task file (built once, by the module fixture)."""
    train_eval_run(root, name="tiny-capacity", moe_every=1, eval_capacity_factor=1.0)
    rng = random.Random(0)
    for _ in range(2400):  # the draws of the run's training text: the task is drawn after them
        rng.choice(WORDS)
    rows = []
    for i in range(24):
        words = [rng.choice(WORDS) for _ in range(6)]
        choices = [" ".join(rng.choice(WORDS) for _ in range(3 + j)) for j in range(4)]
        rows.append({"context": " ".join(words), "choices": choices, "label": i % 4})
    (root / "tasks").mkdir()
    path = root / "tasks" / "words.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _state(model) -> list:
    flags = [m.training for m in model.modules()]
    caps = [(m.capacity_factor, m.eval_capacity_factor) for m in moe_layers(model)]
    return [flags, caps]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = capacity_run(tmp_path_factory.mktemp("capacity"))
    return root / "run", get_task(str(root / "tasks" / "words.jsonl"))


@pytest.mark.slow
def test_priming_after_perplexity_equals_priming_alone(setup):
    run_dir, task = setup
    run = open_run(run_dir, device="cpu")
    assert {m.eval_capacity_factor for m in moe_layers(run.model)} == {1.0}
    before = _state(run.model)
    alone = evaluate_task(run.model, run.tokenizer, task, keep_scores=True)
    # the premise: at this capacity assignments are dropped, so dropless scores differ
    assert alone["compute"]["moe_max_dropped_frac"] > 0
    dropless_run = open_run(run_dir, device="cpu")
    set_capacity(dropless_run.model, None, None)
    dropless = evaluate_task(dropless_run.model, dropless_run.tokenizer, task, keep_scores=True)
    assert dropless["scores"] != alone["scores"]

    ppl = run_perplexity(run_dir, max_tokens=256, opened=run)  # dropless for its own rows
    assert ppl["capacity"]["dropless"] is True
    assert _state(run.model) == before
    after = evaluate_task(run.model, run.tokenizer, task, keep_scores=True)
    assert after["scores"] == alone["scores"] and after["metrics"] == alone["metrics"]
    # run_priming with its own capacity gives it back too
    primed = run_priming(str(run_dir), [task], capacity_factor=None, opened=run)
    assert primed[0]["capacity"]["dropless"] is True
    assert primed[0]["metrics"] == dropless["metrics"]
    assert _state(run.model) == before


@pytest.mark.slow
def test_every_evaluation_restores_train_flags_and_capacity(setup):
    run_dir, task = setup
    run = open_run(run_dir, device="cpu")
    from moelab.data import PreparedData

    data = PreparedData.open(Path(run.run_cfg.data.dir), verify=False)
    sources = sources_from_prepared(data, set(data.train_domains), max_tokens=128)
    # a mixed state: training overall, one block in eval mode, odd capacity factors
    run.model.train()
    run.model.layers[0].eval()
    for i, layer in enumerate(moe_layers(run.model)):
        layer.capacity_factor, layer.eval_capacity_factor = 1.5 + i, 0.75
    before = _state(run.model)
    evaluate_task(run.model, run.tokenizer, task, limit=4)
    assert _state(run.model) == before
    evaluate_perplexity(run.model, sources)
    assert _state(run.model) == before
    run_perplexity(run_dir, max_tokens=128, capacity_factor=2.0, opened=run)
    assert _state(run.model) == before
    # an exception inside the block restores as well
    with pytest.raises(RuntimeError):
        with evaluation_state(run.model, None):
            assert not run.model.training
            assert {m.eval_capacity_factor for m in moe_layers(run.model)} == {None}
            raise RuntimeError("stop")
    assert _state(run.model) == before


@pytest.mark.slow
def test_study_evaluation_same_priming_with_and_without_ppl(setup):
    """The issue's check: a study evaluation with eval.ppl true and false gives the same
    priming results (moelab.study.run.evaluate.evaluate_run, used read-only)."""
    from moelab.study.plan.config import StudyConfig, StudyEval
    from moelab.study.run.evaluate import evaluate_run

    run_dir, _ = setup
    task_path = str(run_dir.parent / "tasks" / "words.jsonl")
    results = {}
    for ppl in (True, False):
        ev = StudyEval(ppl=ppl, ppl_max_tokens=256, zero_shot=[task_path], limit=None)
        results[ppl] = evaluate_run(run_dir, StudyConfig(eval=ev), echo=lambda _: None)
    assert results[True]["eval_loss"] and not results[False]["eval_loss"]
    with_ppl, without = results[True]["details"], results[False]["details"]
    assert results[True]["zero_shot"] == results[False]["zero_shot"]
    for key in ("accuracy", "ci95", "primary_mode", "n_items"):
        assert with_ppl["words/0-shot"][key] == without["words/0-shot"][key], key
    # and the study's number is the capacity-limited one the run asks for, not the dropless one
    # (which differs here, so a leaked dropless setting would fail the equality above)
    run = open_run(run_dir, device="cpu")
    task = get_task(task_path)
    limited = evaluate_task(run.model, run.tokenizer, task)["accuracy"]
    set_capacity(run.model, None, None)
    assert evaluate_task(run.model, run.tokenizer, task)["accuracy"] != limited
    assert results[False]["zero_shot"]["words"] == limited
