"""Benchmark: peak memory of `moelab eval RUN --ppl FILE.txt` on a 3 MB and a 30 MB text file,
the whole file scored (no --max-tokens), with a tiny run trained here (issue 19, item 2).

    python benchmarks/ppl_memory.py [--sizes 3 30] [--batch-size 256] [--keep DIR]

Each size runs in its own process and reports its peak resident memory (VmHWM: the process's own
high-water mark; getrusage's ru_maxrss would carry the parent's over fork and exec). Whole-file
tokenizing used to take about 180 bytes per input byte (30 MB: 5.58 GB); the streamed reader
keeps 2 bytes per token. The issue's bar: the largest file under 1 GB and within 20% of the
smallest. The last line is one JSON object; exit code 1 when the bar is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CHILD = """
import re, sys
from pathlib import Path
from moelab.cli import main
rc = main(sys.argv[1:])
hwm = re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
print("PEAK_KB", hwm, file=sys.stderr)
sys.exit(rc)
"""

LINES = [
    "The cat sat on the mat, and the dog sat on the log.",
    "Caf\u00e9 au lait \u2014 d\u00e9j\u00e0 vu! Numbers: 12345 67.8",
    "A bird sang in the old tree while the river ran under the bridge.",
    "",
]


def text_of(n_bytes: int) -> str:
    block = "\n".join(f"{i}: {line}" for i, line in enumerate(LINES * 8)) + "\n"
    return block * max(1, n_bytes // len(block.encode("utf-8")))


def tiny_run(work: Path) -> Path:
    from moelab.cli import main
    from moelab.data import prepare

    src = work / "src"
    src.mkdir()
    for i in range(20):
        (src / f"d{i}.txt").write_text(text_of(4000).replace("0", str(i % 10)))
    prepare(work / "data", sources=[f"a={src}/*.txt"], vocab_size=300, val_fraction=0.1)
    cfg = {
        "model": {
            "preset": "dense-cpu-0.5m",
            "n_layers": 2,
            "d_model": 32,
            "n_heads": 2,
            "d_ffn": 64,
            "max_seq_len": 64,
        },
        "data": str(work / "data"),
        "train": {
            "budget_steps": 2,
            "seq_len": 64,
            "batch_size": 4,
            "eval_tokens": 0,
            "checkpoint_every": 0,
            "device": "cpu",
        },
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(work / "run.yaml"), "--out", str(work / "run"), "--no-progress"])
    if rc:
        raise SystemExit(f"training the tiny run failed ({rc})")
    return work / "run"


def peak(run: Path, text_file: Path, batch_size: int) -> tuple[int, float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = ["eval", run, "--ppl", text_file, "--batch-size", str(batch_size), "--json"]
    argv += ["--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"eval failed: {proc.stderr[-2000:]}")
    kb = int(re.search(r"PEAK_KB (\d+)", proc.stderr).group(1))
    (row,) = json.loads(proc.stdout)["results"][0]["domains"]
    return kb, seconds, row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 30], help="file sizes in MB")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: temp)")
    args = ap.parse_args()
    if not Path("/proc/self/status").is_file():
        print(json.dumps({"benchmark": "ppl_memory", "skipped": "needs Linux /proc"}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = tiny_run(work)
        figures = {}
        for mb in args.sizes:
            f = work / f"text_{mb}mb.txt"
            f.write_text(text_of(mb << 20), encoding="utf-8")
            kb, seconds, row = peak(run, f, args.batch_size)
            figures[f"{mb}MB"] = {
                "peak_rss_mb": round(kb / 1024, 1),
                "seconds": round(seconds, 1),
                "tokens": row["tokens"],
                "perplexity": round(row["perplexity"], 3),
            }
            print(
                f"{mb:>4} MB: peak RSS {kb / 1024:7.1f} MB, {row['tokens']} tokens, {seconds:.1f} s"
            )
    small, big = figures[f"{min(args.sizes)}MB"], figures[f"{max(args.sizes)}MB"]
    ok = big["peak_rss_mb"] < 1024 and big["peak_rss_mb"] <= 1.2 * small["peak_rss_mb"]
    print(json.dumps({"benchmark": "ppl_memory", "figures": figures, "within_bar": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
