"""Perplexity: window coverage, the strided loss against a hand computation, and a trained run's
in-domain / out-of-domain report with bits per byte."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _eval_models import tiny_model
from moelab.errors import MoelabError
from moelab.eval.perplexity import (
    IN_DOMAIN,
    OUT_OF_DOMAIN,
    PplSource,
    evaluate_perplexity,
    iter_windows,
    run_perplexity,
)
from moelab.eval.runs import weights_sha256


@pytest.mark.parametrize("n, context, stride", [(50, 16, 16), (50, 16, 5), (17, 16, 1), (3, 16, 8)])
def test_windows_score_every_token_once(n, context, stride):
    scored = []
    for start, end, first in iter_windows(n, context, stride):
        assert end - start <= context and start < first <= end
        if start > 0:  # sliding: every scored token sees >= context - stride tokens of history
            assert first - 1 - start >= min(context - stride, first - 1)
        scored += range(first, end + 1)
    assert scored == list(range(1, n))
    with pytest.raises(MoelabError, match="stride must be between 1 and the context"):
        next(iter_windows(n, context, context + 1))


def test_strided_loss_equals_hand_computation():
    model = tiny_model(300, moe=True)
    tokens = np.random.default_rng(0).integers(0, 300, size=70)
    src = PplSource("rand", tokens, n_bytes=100, role=OUT_OF_DOMAIN, origin="test")
    result = evaluate_perplexity(model, [src], context=16, stride=6, batch_size=3)
    nll = 0.0
    for start, end, first in iter_windows(len(tokens), 16, 6):
        x = torch.tensor(tokens[start:end])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits_BTV.double(), -1)[0]
        for t in range(first, end + 1):
            nll -= float(logp[t - 1 - start, tokens[t]])
    (row,) = result["domains"]
    assert row["tokens"] == 69
    assert row["loss"] == pytest.approx(nll / 69, abs=1e-5)
    assert row["perplexity"] == pytest.approx(math.exp(nll / 69), rel=1e-5)
    assert row["bits_per_byte"] == pytest.approx(nll / math.log(2) / 100, rel=1e-5)


@pytest.mark.slow
def test_run_perplexity_marks_domains_and_reports_capacity(eval_run, tmp_path):
    run = eval_run
    result = run_perplexity(run, stride=32)
    roles = {d["name"]: d["role"] for d in result["domains"]}
    assert roles == {"books": IN_DOMAIN, "news": OUT_OF_DOMAIN}
    assert result["capacity"] == {"moe": True, "eval_capacity_factor": None, "dropless": True}
    assert result["compute"]["moe_max_dropped_frac"] == 0.0
    assert result["checkpoint"]["step"] == 8 and len(result["checkpoint"]["sha256"]) == 64
    for d in result["domains"]:
        assert 0 < d["loss"] < math.log(300) + 1 and d["bytes"] > d["tokens"] / 2
    # extra text files and globs: each file its own row, out-of-domain, bytes = UTF-8 size
    text = "The cat sat on the mat. Caf\u00e9 au lait.\n" * 20
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(text.upper(), encoding="utf-8")
    extra = run_perplexity(run, [str(tmp_path / "*.txt")], capacity_factor=0.5)
    assert [d["name"] for d in extra["domains"]] == ["a.txt", "b.txt"]
    assert extra["domains"][0]["bytes"] == len(text.encode("utf-8"))
    assert all(d["role"] == OUT_OF_DOMAIN for d in extra["domains"])
    assert extra["capacity"]["eval_capacity_factor"] == 0.5
    with pytest.raises(MoelabError, match="no file matches"):
        run_perplexity(run, [str(tmp_path / "*.none")])
    json.dumps(result)  # plain data only


def test_checkpoint_identity_of_one_file_and_of_shards():
    """A checkpoint of several processes has DCP shards only: its identity is the SHA-256 of
    DCP's .metadata (which names every shard's pieces), as meta.json records it."""
    one = {"step": 4, "files": {"model.safetensors": {"bytes": 10, "sha256": "a" * 64}}}
    shards = {"step": 4, "sharded": {".metadata": {"bytes": 9, "sha256": "b" * 64}}}
    assert weights_sha256(one) == "a" * 64 and weights_sha256(shards) == "b" * 64
    assert weights_sha256({"step": 4}) is None


def test_batched_takes_lists_and_generators():
    from moelab.eval.perplexity import _batched

    expected = [[1, 2], [3, 4], [5]]
    assert list(_batched([1, 2, 3, 4, 5], 2)) == expected  # a list once looped forever
    assert list(_batched((i for i in range(1, 6)), 2)) == expected
