"""An item with many choices is scored in batches of at most --batch-tokens (issue 19, item 6):
10^4 choices took 4.95 GB, about 0.5 MB per choice, because every choice of a shared context ran
in one batch whatever --batch-tokens said."""

from __future__ import annotations

import pytest

from moelab.eval.priming import evaluate_task
from moelab.eval.shared import continuation_batches
from moelab.eval.tasks.items import Item, Task

CONTEXT = "The cat sat on the mat. The dog sat on the log. Question: where did the bird sing?"
WORDS = ["tree", "mat", "log", "bowl", "lid", "sun", "jar", "milk", "water", "sky"]


def choices(n: int) -> tuple[str, ...]:
    """``n`` distinct candidates of 1 to 4 words."""
    out = []
    for i in range(n):
        words, k = [], i
        while True:
            words.append(WORDS[k % len(WORDS)])
            k //= len(WORDS)
            if not k:
                break
        out.append("in the " + " ".join(words))
    return tuple(out)


def task_of(n: int) -> Task:
    return Task("many", "choice", [Item((CONTEXT,), choices(n), 3)], "eval")


def forward_sizes(model):
    """Records rows * (cached + new positions) of every forward call: what a batch's keys,
    values and hidden states scale with."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        tokens_BT = args[0]
        cache = kwargs.get("kv_cache")
        cached = cache.length if cache is not None else 0
        sizes.append(tokens_BT.shape[0] * (cached + tokens_BT.shape[1]))

    return sizes, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_two_thousand_choices_stay_within_batch_tokens(tok, model):
    sizes, handle = forward_sizes(model)
    try:
        r = evaluate_task(model, tok, task_of(2000), batch_tokens=2048)
    finally:
        handle.remove()
    assert r["n_items"] == 1 and r["compute"]["unique_sequences"] == 4000  # + calibration
    assert max(sizes) <= 2048, f"largest batch {max(sizes)} positions"
    assert len(sizes) > 2 * 4000 * 3 // 2048  # split into many batches, not one per context


def test_batched_scores_equal_unbatched(tok, model):
    task = task_of(60)
    ref = evaluate_task(model, tok, task, batch_tokens=10**9, keep_scores=True)
    packed = evaluate_task(model, tok, task, share_contexts=False, keep_scores=True)
    for batch_tokens in (64, 300):
        got = evaluate_task(model, tok, task, batch_tokens=batch_tokens, keep_scores=True)
        assert got["compute"]["batches"] > ref["compute"]["batches"]
        for other in (ref, packed):
            for mode, values in got["scores"][0][0].items():
                assert values == pytest.approx(other["scores"][0][0][mode], abs=1e-5), mode


def test_continuation_batches_cover_every_choice_once():
    conts = [(1,) * n for n in (1, 5, 2, 9, 3, 3, 1, 7)]
    for budget in (1, 10, 25, 1000):
        groups = continuation_batches(4, conts, budget)
        assert [i for g in groups for i in g] == list(range(len(conts)))
        for g in groups:
            longest = max(len(conts[i]) - 1 for i in g)
            assert len(g) == 1 or len(g) * (4 + longest) <= budget
