"""lm-evaluation-harness with moelab's adapter: the same accuracies and per-item
log-likelihoods as moelab's own evaluation, and the same numbers as the harness's Hugging Face
backend on the exported model (an implementation that shares no code with moelab)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from _interop_runs import fresh_run, trained_run  # noqa: E402
from _train_data import ANIMALS, PLACES  # noqa: E402

TASK = "moelab_interop_mc"


def _write_task(folder: Path) -> Path:
    """A 4-way multiple-choice JSONL task in the generic moelab schema and the harness YAML
    that reads the same file. Choices differ in length, so sum and per-character scoring
    disagree on some items."""
    rng = random.Random(0)
    animals = list(ANIMALS)
    lines = []
    for _ in range(16):
        animal = rng.choice(animals)
        right = " ".join(ANIMALS[animal])
        wrong = [" ".join(ANIMALS[a]) for a in rng.sample([a for a in animals if a != animal], 3)]
        choices = [right + " near the " + rng.choice(PLACES) + "."] + [
            w + rng.choice(["", " near the " + rng.choice(PLACES)]) + "." for w in wrong
        ]
        rng.shuffle(choices)
        label = next(i for i, c in enumerate(choices) if c.startswith(right))
        lines.append(json.dumps({"context": f"The {animal}", "choices": choices, "label": label}))
    data = folder / "mc.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {folder / "hf_datasets_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
        encoding="utf-8",
    )
    return data


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    # simple_evaluate ends by collecting an environment report (torch's collect_env runs pip and
    # other subprocesses: seconds per call). It is bookkeeping, not evaluation; skip it here.
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


@pytest.fixture(scope="module")
def setup(grammar_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("interop_lm_eval")
    prepared = grammar_data
    from moelab.data import PreparedData

    vocab = int(PreparedData.open(prepared).vocab_size)
    runs = {
        # a real trainer run, and the paper's MoE that no transformers class expresses
        "dense": trained_run(root, prepared, moe=False, steps=2),
        "moe": fresh_run(root, "moe", prepared, vocab, n_experts=4, moe_every=2, top_k=2),
    }
    task_dir = root / "task"
    task_dir.mkdir()
    data = _write_task(task_dir)
    return {"root": root, "runs": runs, "task_dir": task_dir, "data": data, "cache": {}}


def _harness(lm, task_dir: Path) -> tuple[dict, list[list[float]]]:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK], task_manager=manager, num_fewshot=0, log_samples=True
    )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return out["results"][TASK], lls


def _adapter_run(setup, kind: str):
    from moelab.interop.lm_eval_adapter import MoelabLM

    if kind not in setup["cache"]:
        lm = MoelabLM(run_dir=str(setup["runs"][kind]), batch_size=8, device="cpu")
        setup["cache"][kind] = (lm, *_harness(lm, setup["task_dir"]))
    return setup["cache"][kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_harness_with_adapter_equals_moelab_eval(setup, kind):
    from moelab.eval.priming import evaluate_task
    from moelab.eval.runs import open_run
    from moelab.eval.tasks.registry import get_task

    _, results, lls = _adapter_run(setup, kind)
    opened = open_run(setup["runs"][kind], device="cpu")
    ours = evaluate_task(
        opened.model, opened.tokenizer, get_task(str(setup["data"])), keep_scores=True
    )
    assert results["acc,none"] == pytest.approx(ours["metrics"]["sum"]["mean"], abs=1e-12)
    assert results["acc_norm,none"] == pytest.approx(ours["metrics"]["char"]["mean"], abs=1e-12)
    per_item = [item["sum"] for item in ours["scores"][0]]
    assert len(per_item) == len(lls) == 16
    np.testing.assert_allclose(np.array(lls), np.array(per_item), rtol=0, atol=1e-4)
    # The items are not trivial for the model: the two scoring modes disagree somewhere.
    sums, chars = ours["metrics"]["sum"], ours["metrics"]["char"]
    assert sums["mean"] != chars["mean"] or any(
        np.argmax(s["sum"]) != np.argmax(s["char"]) for s in ours["scores"][0]
    )


@pytest.mark.slow
def test_adapter_agrees_with_harness_hf_backend_on_export(setup):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from moelab.interop import export_hf

    lm, results, lls = _adapter_run(setup, "dense")
    out = setup["root"] / "dense_hf"
    export_hf(setup["runs"]["dense"], out)
    hf = HFLM(pretrained=str(out), batch_size=8, device="cpu", dtype="float32")
    assert hf.max_length == lm.max_length and hf.prefix_token_id == lm.prefix_token_id
    hf_results, hf_lls = _harness(hf, setup["task_dir"])
    np.testing.assert_allclose(np.array(lls), np.array(hf_lls), rtol=0, atol=1e-4)
    assert results["acc,none"] == hf_results["acc,none"]
    assert results["acc_norm,none"] == hf_results["acc_norm,none"]

    # Rolling log-likelihood, one text longer than the 64-token context (several windows).
    texts = ["The cat sleeps quietly near the river.", " ".join(["The owl watches closely."] * 20)]
    rolling = [
        Instance("loglikelihood_rolling", {}, (t,), i, metadata=(TASK, i, 1))
        for i, t in enumerate(texts)
    ]
    assert len(lm.tok_encode(texts[1])) > lm.max_length
    np.testing.assert_allclose(
        lm.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling), rtol=0, atol=1e-4
    )

    # Greedy generation until a stop string.
    kwargs = {"until": ["."], "max_gen_toks": 12, "do_sample": False}
    # Prompts of one token length: the HF backend left-pads a batch, and XGLM numbers
    # positions from the first (padded) slot, so unequal prompts would not be comparable.
    prompts = ["The cat", "The dog", "The owl"]
    assert len({len(lm.tok_encode(p)) for p in prompts}) == 1
    gens = [
        Instance("generate_until", {}, (ctx, dict(kwargs)), i, metadata=(TASK, i, 1))
        for i, ctx in enumerate(prompts)
    ]
    assert lm.generate_until(gens) == hf.generate_until(gens)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import")
def test_registered_by_name_as_the_command_line_uses_it(setup):
    """The harness CLI (``python -m moelab.interop.lm_eval_adapter --model moelab --model_args
    run_dir=...``) ends in ``simple_evaluate(model="moelab", model_args="...", device="cuda:0")``
    after indexing every stock task (seconds of YAML parsing, skipped here). Check that path:
    the name resolves through the harness's registry, the argument string is parsed, the
    CLI's default cuda device falls back to the CPU, and the scores are the adapter's."""
    import runpy

    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from moelab.interop.lm_eval_adapter import MoelabLM

    # Running the module file again (as `python -m` does, under another module name) must
    # register the same target, not collide with the normal import's registration.
    runpy.run_module("moelab.interop.lm_eval_adapter", run_name="as_script")
    assert get_model("moelab") is MoelabLM

    manager = TaskManager(include_path=str(setup["task_dir"]), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model="moelab",
        model_args=f"run_dir={setup['runs']['moe']},batch_tokens=4096",
        tasks=[TASK],
        task_manager=manager,
        device="cuda:0",
        batch_size=8,
        limit=4,
        log_samples=True,
    )
    _, _, lls = _adapter_run(setup, "moe")
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    got = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    np.testing.assert_allclose(np.array(got), np.array(lls[:4]), rtol=0, atol=1e-5)
