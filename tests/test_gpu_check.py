"""benchmarks/gpu_check.py --smoke: the GPU check's every part runs, on CPU with tiny shapes,
so the script is ready when a GPU is lent (issue 16 item 8)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_part():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "gpu_check" and report["smoke"] is True
    # The layer ratio for both kernels, with capacity and dropless; the smoke run forces
    # grouped_mm (on CPU "auto" is the loop).
    kernels = {(r["kernel"], r["capacity_factor"]) for r in report["moe_layer"]}
    assert kernels == {("grouped_mm", 1.0), ("grouped_mm", None), ("loop", 1.0), ("loop", None)}
    for r in report["moe_layer"]:
        assert r["runs_grouped_mm"] == (r["kernel"] == "grouped_mm")
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    # Every training case ran (moelab dense, MoE and modern MoE; XGLM and both Mixtral peers),
    # with finite losses that fell from the first timed step to the last.
    impls = [(r["model"], r["impl"]) for r in report["training"]]
    assert len(impls) == 6 and len(set(impls)) == 6
    for r in report["training"]:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["mfu"] is None  # no peak FLOPs on CPU
        assert math.isfinite(r["first_loss"]) and r["last_loss"] < r["first_loss"]
    assert "moe_layer_ratio" in report["checks"]
    assert "MoE layer fwd+bwd" in proc.stdout and "target moe_layer_ratio" in proc.stdout
