"""Scoring: harness-style tokenization, and every scoring mode equal to a hand computation of
the log-probs through the model (a fresh tiny MoE, dropless, and a real BPE tokenizer)."""

from __future__ import annotations

import math

import pytest

from _eval_models import hand_logprobs
from moelab.data.tokenizer import eot_token_id
from moelab.eval.priming import evaluate_task
from moelab.eval.scoring import Request, encode_pair, model_logits_at, score_requests
from moelab.eval.tasks.items import Item, Task
from moelab.eval.tokens import make_encode


def test_encode_pair_moves_trailing_space_and_splits_the_whole_string(tok):
    encode = make_encode(tok)
    ctx, cont = encode_pair(encode, "The cat sat on the ", "mat.", prefix_id=0)
    assert (ctx, cont) == encode_pair(encode, "The cat sat on the", " mat.", prefix_id=0)
    whole = tok.encode("The cat sat on the mat.").ids
    assert list(ctx) == tok.encode("The cat sat on the").ids
    assert list(ctx + cont) == whole  # continuation = the whole string's tokens after the context
    # An empty context becomes the end-of-text token, as the harness's prefix token.
    eot = eot_token_id(tok, default=0)
    assert encode_pair(encode, "", " mat", prefix_id=eot) == ((eot,), tuple(tok.encode(" mat").ids))


@pytest.mark.slow
def test_batched_scores_equal_unbatched_forward(tok, model):
    encode = make_encode(tok)
    pairs = [
        ("The cat sat on the", " mat."),
        ("How do I open a jar?", " Twist the lid."),
        ("She poured", " milk in the bowl."),
        ("A", " bird sang in the tree."),
    ]
    reqs = [Request(*encode_pair(encode, c, k, prefix_id=0)) for c, k in pairs]
    for batch_tokens in (16, 4096):  # one sequence per batch vs all in one padded batch
        scored = score_requests(
            reqs, model_logits_at(model), max_len=128, batch_tokens=batch_tokens
        )
        for r, s in zip(reqs, scored):
            hand = hand_logprobs(model, list(r.context_ids), list(r.continuation_ids))
            assert s.logprobs.tolist() == pytest.approx(hand, abs=1e-5)


def test_left_truncation_keeps_the_continuation(tok, model):
    encode = make_encode(tok)
    r = Request(*encode_pair(encode, "The cat sat on the mat. " * 8, "The dog", prefix_id=0))
    (s,) = score_requests([r], model_logits_at(model), max_len=12)
    full = list(r.context_ids + r.continuation_ids)[-13:]
    n = len(r.continuation_ids)
    assert s.logprobs.tolist() == pytest.approx(
        hand_logprobs(model, full[:-n], full[-n:]), abs=1e-5
    )


@pytest.fixture(scope="module")
def trained(eval_run):
    """(model, tokenizer) of a tiny MoE trained a few steps in this test session."""
    from moelab.eval.runs import open_run

    run = open_run(eval_run, device="cpu")
    return run.model, run.tokenizer


@pytest.mark.parametrize("which", ["trained", "fresh"])
def test_every_mode_equals_a_hand_computation(which, tok, model, trained):
    if which == "trained":
        model, tok = trained
    # Two candidates sharing a first word, so "mean after the common prefix" differs from mean.
    item = Item(("How do I open a jar?",), ("Twist the lid to the left.", "Twist the dog."), 0)
    partial = Item(("The cat sat on the mat", "The dog sat on the log"), ("and sang.",), 1)
    task = Task("hand", "choice", [item, partial], "eval", neutral_prompt="Answer:")
    result = evaluate_task(model, tok, task, shots=0, keep_scores=True)
    encode = make_encode(tok)
    for it, got in zip(task.items, result["scores"][0]):
        fulls, sums, lps = [], [], []
        for j, (ctx, cont) in enumerate(it.candidates()):
            c_ids, k_ids = encode_pair(encode, ctx, cont, prefix_id=eot_token_id(tok, default=0))
            lp = hand_logprobs(model, list(c_ids), list(k_ids))
            fulls.append(list(c_ids + k_ids))
            lps.append((len(c_ids), lp))
            sums.append(sum(lp))
            n_ids = encode_pair(encode, "Answer:", cont, prefix_id=0)
            neutral = sum(hand_logprobs(model, list(n_ids[0]), list(n_ids[1])))
            target = it.target(j)
            assert got["sum"][j] == pytest.approx(sum(lp), abs=1e-4)
            assert got["char"][j] == pytest.approx(sum(lp) / len(target), abs=1e-4)
            assert got["byte"][j] == pytest.approx(sum(lp) / len(target.encode()), abs=1e-4)
            assert got["calibrated"][j] == pytest.approx(sum(lp) - neutral, abs=1e-4)
        prefix = 0
        while all(len(f) > prefix for f in fulls) and len({f[prefix] for f in fulls}) == 1:
            prefix += 1
        if it is item:  # the shared " Twist" is past the context: mean differs from sum/len
            assert prefix > lps[0][0]
        for j, (ctx_len, lp) in enumerate(lps):
            tail = lp[max(prefix - ctx_len, 0) :] or lp
            assert got["mean"][j] == pytest.approx(sum(tail) / len(tail), abs=1e-4)
    # accuracy of a mode = argmax of its scores
    for mode in ("sum", "mean", "char", "byte", "calibrated"):
        picks = [
            int(max(range(len(s[mode])), key=lambda j: s[mode][j])) for s in result["scores"][0]
        ]
        acc = sum(p == it.label for p, it in zip(picks, task.items)) / 2
        assert math.isclose(result["metrics"][mode]["mean"], acc)


def test_lambada_style_greedy_accuracy_matches_argmax(tok, model):
    import torch

    item = Item(("The cat sat on the",), ("mat",), 0)
    task = Task("lw", "last_word", [item], "test")
    result = evaluate_task(model, tok, task, keep_scores=True)
    encode = make_encode(tok)
    c_ids, k_ids = encode_pair(encode, "The cat sat on the", " mat", prefix_id=0)
    full = torch.tensor([list(c_ids + k_ids)])
    with torch.no_grad():
        pred = model(full[:, :-1]).logits_BTV[0].argmax(-1).tolist()
    greedy = all(pred[len(c_ids) - 1 + j] == k for j, k in enumerate(k_ids))
    assert result["metrics"]["greedy"]["mean"] == float(greedy)
    hand = sum(hand_logprobs(model, list(c_ids), list(k_ids)))
    assert result["scores"][0][0]["logprob"][0] == pytest.approx(hand, abs=1e-4)


def test_shared_contexts_give_the_packed_scores(tok, model):
    encode = make_encode(tok)
    ctx = "The cat sat on the mat. The dog sat on the log. A bird"
    conts = [" sang in the tree.", " ran", " sat on the mat again.", " sang in the tree."]
    reqs = [Request(*encode_pair(encode, ctx, k, prefix_id=0)) for k in conts]
    reqs.append(Request(*encode_pair(encode, "Hi", " there", prefix_id=0)))  # not shareable
    packed = score_requests(reqs, model_logits_at(model), max_len=128)
    shared = score_requests(
        reqs, model_logits_at(model), max_len=128, shared_model=model, min_shared_tokens=1
    )
    for a, b in zip(packed, shared):
        assert a.logprobs.tolist() == pytest.approx(b.logprobs.tolist(), abs=1e-5)
        assert a.greedy == b.greedy
