"""`moelab plan` (issue 16 item 7): memory per GPU and step time on paper. The paper's MoE 15B at
its 64 GPUs is computed here by hand from the formulas in moelab/capacity.py and docs/plan.md;
the worked examples in docs/plan.md are what the command prints; bad input is one line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from _robust import expect_user_error, run_cli
from moelab.capacity import Cluster, Layout, estimate_memory, step_seconds
from moelab.presets import get_preset

DOC = Path(__file__).resolve().parents[1] / "docs" / "plan.md"


def test_moe_15b_on_64_gpus_by_hand():
    h, f, L, V, E = 768, 3072, 12, 50257, 512  # PAPER.md; MoE in layers 2, 4, ... (6 of 12)
    attention = 4 * (h * h + h)  # q, k, v, out with biases
    norms = 2 * (2 * h)  # two LayerNorms per block
    ffn = 2 * h * f + f + h  # fc1, fc2 with biases
    dense_block = attention + norms + ffn
    moe_block = attention + norms + h * E  # the router instead of the FFN; experts apart
    experts = 6 * E * ffn
    embedding = V * h
    total = 6 * dense_block + 6 * moe_block + experts + embedding + 2 * h
    assert total == 14_604_989_184  # PAPER.md: 14.61B

    ep = world = 64
    local = (total - experts) / ep + experts / ep  # FSDP over the expert group; E/ep experts
    params = 4 * local + 2 * (embedding + 2 * dense_block)  # fp32 shard + bf16 working copy
    grads, optim = 4 * local, 8 * local
    S = 4 * 2048  # micro-batch 4
    slots = E * math.ceil(1.0 * 2 * math.ceil(S / E))  # E * C, capacity factor 1, top-2
    dense_layer = 15 * h * S + (3 * h + 4 * f) * S
    moe_layer = 15 * h * S + (3 * h + 4 * f) * slots
    assert moe_layer > dense_layer
    activations = 2 * h * S * L + moe_layer  # checkpointing: inputs + one layer recomputed
    a2a = 4 * slots * h * 2
    hand_total = params + grads + optim + activations + a2a
    assert round(hand_total) == 4_341_898_944  # 4.04 GiB

    cfg = get_preset("moe-15b")
    cluster = Cluster(nodes=8, gpus_per_node=8, gpu_memory_gib=80, peak_tflops=312)
    layout = Layout(ep=ep, micro_batch=4, seq_len=2048, activation_checkpointing=True)
    mem = estimate_memory(cfg, cluster, layout)
    assert mem.parameters == pytest.approx(params, rel=1e-12)
    assert mem.gradients == pytest.approx(grads, rel=1e-12)
    assert mem.optimizer == pytest.approx(optim, rel=1e-12)
    assert mem.activations == pytest.approx(activations, rel=1e-12)
    assert mem.all_to_all == pytest.approx(a2a, rel=1e-12)
    assert mem.total == pytest.approx(hand_total, rel=1e-12)
    off = estimate_memory(cfg, cluster, Layout(ep, 4, 2048, activation_checkpointing=False))
    assert off.activations == pytest.approx(6 * dense_layer + 6 * moe_layer, rel=1e-12)

    # Step time: PaLM FLOPs of the step's tokens at 30% of 312 TFLOP/s on each of 64 GPUs.
    active = 12 * (attention + norms) + 6 * ffn + 6 * (h * E + 2 * ffn) + embedding + 2 * h
    palm = 6 * active + 12 * L * 2048 * h
    assert palm == 1_152_576_000
    tokens = S * world
    assert step_seconds(cfg, cluster, layout, 0.3) == pytest.approx(
        palm * tokens / (world * 312e12 * 0.3), rel=1e-12
    )


def test_fine_grained_and_shared_experts_by_hand():
    """Activations without checkpointing: an MoE layer's experts at the expert width
    (d_expert), its shared experts (n_shared x d_expert wide) on every token."""
    import dataclasses

    h, S, E, d = 768, 2048, 512, 768  # moe-15b, micro-batch 1; experts a quarter as wide
    cfg = dataclasses.replace(get_preset("moe-15b"), d_expert=d, n_shared_experts=2)
    cluster = Cluster(nodes=8, gpus_per_node=8, gpu_memory_gib=80, peak_tflops=312)
    mem = estimate_memory(cfg, cluster, Layout(64, 1, S, activation_checkpointing=False))
    slots = E * math.ceil(2 * math.ceil(S / E))
    dense_layer = 15 * h * S + (3 * h + 4 * 3072) * S
    moe_layer = 15 * h * S + (3 * h + 4 * d) * slots + (3 * h + 4 * 2 * d) * S
    assert mem.activations == pytest.approx(6 * dense_layer + 6 * moe_layer, rel=1e-12)


def _examples() -> list[tuple[str, str]]:
    """(command, printed text) of every worked example in docs/plan.md."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```text\n\$ (moelab plan [^\n]+)\n(.*?)```", text, flags=re.S)
    return [(cmd, out.rstrip("\n")) for cmd, out in blocks]


def test_the_worked_examples_are_what_the_command_prints(capsys):
    examples = _examples()
    shown = {cmd.split()[2] for cmd, _ in examples}
    assert shown == {"moe-15b", "moe-52b", "moe-207b", "moe-1.1t"}
    for cmd, printed in examples:
        rc, out, err = run_cli(capsys, cmd.split()[1:])
        assert rc == 0, err
        assert out.rstrip("\n") == printed, cmd


@pytest.mark.parametrize(
    "argv, match",
    [
        (["plan", "moe-9t"], [r"moe-9t"]),
        (["plan", "moe-15b", "--ep", "3"], [r"--ep 3", r"512 experts"]),
        (["plan", "moe-15b", "--nodes", "3", "--ep", "16"], [r"--ep 16", r"24 GPUs"]),
        (["plan", "dense-125m", "--ep", "2"], [r"dense", r"--ep 1"]),
        (["plan", "moe-15b", "--mfu", "0"], [r"--mfu"]),
        (["plan", "moe-15b", "--gpu-memory", "nan"], [r"--gpu-memory"]),
        (["plan", "moe-15b", "--micro-batch", "0"], [r"--micro-batch"]),
        (["plan", "moe-15b", "--nodes", "two"], [r"--nodes"]),
    ],
)
def test_bad_input_is_one_line(capsys, argv, match):
    expect_user_error(capsys, argv, match=match)
