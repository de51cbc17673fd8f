"""TrainStream (weighted, deterministic, rank-sliced) and eval_windows (every token once)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from moelab.data import PreparedData, TrainStream, eval_windows, prepare
from moelab.errors import MoelabError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    texts = {
        "big": ["alpha beta gamma delta " * 20, "epsilon zeta eta theta " * 15],
        "small": ["one two three four five " * 12],
    }
    for name, units in texts.items():
        paras = [units[i % len(units)] + str(rng.integers(1000)) for i in range(40 * len(units))]
        (root / f"{name}.txt").write_text("\n\n".join(paras) + "\n")
    (root / "held.txt").write_text("\n\n".join(f"held out paragraph {i}" for i in range(50)))
    out = root / "data"
    prepare(
        out,
        [f"big={root}/big.txt:docs=blank", f"small={root}/small.txt:docs=blank"],
        [f"held={root}/held.txt:docs=blank"],
        vocab_size=300,
    )
    return PreparedData.open(out)


def test_batch_shape_and_rows_are_slices_of_the_planned_domain(data):
    stream = TrainStream(data, seq_len=16, batch_size=8, seed=3)
    batch = stream.batch(5)
    assert batch.shape == (8, 17) and batch.dtype == torch.int64
    domain_B, start_B = stream.plan(5)
    for row, d, s in zip(batch, domain_B, start_B):
        toks = data.tokens(stream.domains[d], "train")
        assert row.tolist() == toks[s : s + 17].tolist()
    assert not torch.equal(stream.batch(6), batch)
    assert not torch.equal(TrainStream(data, 16, 8, seed=4).batch(5), batch)


def test_default_weights_follow_token_counts(data):
    stream = TrainStream(data, 16, 8, seed=0)
    n_big, n_small = data.num_tokens("big", "train"), data.num_tokens("small", "train")
    assert stream.weights["big"] == pytest.approx(n_big / (n_big + n_small))


def test_domain_weights_are_respected(data):
    stream = TrainStream(data, 16, 32, seed=1, weights={"big": 1.0, "small": 3.0})
    counts = np.zeros(2)
    for step in range(200):
        domain_B, _ = stream.plan(step)
        counts += np.bincount(domain_B, minlength=2)
    share_small = counts[stream.domains.index("small")] / counts.sum()
    assert share_small == pytest.approx(0.75, abs=0.03)
    only_big = TrainStream(data, 16, 32, seed=1, weights={"big": 1.0})
    assert only_big.domains == ["big"]


@pytest.mark.parametrize(
    "weights, words",
    [
        ({"held": 1.0}, "not training domains"),
        ({"big": -1.0}, "finite and >= 0"),
        ({"big": 0.0, "small": 0.0}, "all zero"),
    ],
)
def test_bad_weights(data, weights, words):
    with pytest.raises(MoelabError, match=words):
        TrainStream(data, 16, 8, seed=0, weights=weights)


def test_ranks_split_the_global_batch(data):
    stream = TrainStream(data, 12, 6, seed=7)
    full = stream.batch(11)
    parts = [stream.batch(11, rank=r, world=2) for r in range(2)]
    assert parts[0].shape == (3, 13)
    assert torch.equal(parts[0], full[0::2]) and torch.equal(parts[1], full[1::2])
    assert torch.equal(
        torch.cat([full[0::3], full[1::3], full[2::3]]).sort(0).values,
        torch.cat([stream.batch(11, r, 3) for r in range(3)]).sort(0).values,
    )
    with pytest.raises(MoelabError, match="not divisible"):
        stream.batch(0, rank=0, world=4)


def test_same_batch_after_a_process_restart(data):
    mine = TrainStream(data, 16, 8, seed=42).batch(1234)
    code = textwrap.dedent(
        f"""
        import hashlib
        from moelab.data import PreparedData, TrainStream
        data = PreparedData.open({str(data.path)!r})
        b = TrainStream(data, 16, 8, seed=42).batch(1234)
        print(hashlib.sha256(b.numpy().tobytes()).hexdigest())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(mine.numpy().tobytes()).hexdigest()


def test_seq_len_longer_than_a_domain_is_an_error(data):
    with pytest.raises(MoelabError, match="fewer than seq_len"):
        TrainStream(data, 10**6, 8, seed=0)


@pytest.mark.parametrize("seq_len, batch_size", [(7, 3), (16, 2), (1, 64)])
@pytest.mark.parametrize("with_bos", [True, False])
def test_eval_windows_cover_every_token_once(data, seq_len, batch_size, with_bos):
    tokens = data.tokens("held", "val")
    bos = data.eot_id if with_bos else None
    seen_targets, n_rows = [], 0
    for b in eval_windows(tokens, seq_len, batch_size, bos_id=bos, pad_id=data.pad_id):
        assert b.inputs_BT.shape == b.targets_BT.shape == b.mask_BT.shape
        assert b.inputs_BT.shape[1] == seq_len and b.inputs_BT.shape[0] <= batch_size
        assert (b.targets_BT[~b.mask_BT] == data.pad_id).all()
        flat_in, flat_tg = b.inputs_BT[b.mask_BT], b.targets_BT[b.mask_BT]
        seen_targets.append(flat_tg)
        # next-token pairs: within a row, the target of t is the input of t + 1
        assert torch.equal(
            b.inputs_BT[:, 1:][b.mask_BT[:, 1:]], b.targets_BT[:, :-1][b.mask_BT[:, 1:]]
        )
        n_rows += b.inputs_BT.shape[0]
        assert len(flat_in) == b.n_tokens
    targets = torch.cat(seen_targets).numpy()
    expected = np.asarray(tokens, dtype=np.int64)
    assert np.array_equal(targets, expected if with_bos else expected[1:])
    assert n_rows == -(-len(targets) // seq_len)


def test_eval_windows_max_tokens(data):
    tokens = data.tokens("big", "val")
    got = sum(b.n_tokens for b in eval_windows(tokens, 8, 4, max_tokens=50, bos_id=0))
    assert got == 50
