"""Benchmark: `moelab prepare` throughput (MB/s of input text) with 1 and 2 worker processes on
../shared/data/gutenberg_nltk, next to the peer: Hugging Face `tokenizers` encoding the same
documents directly (one thread, and its own rayon thread pool on all cores).

    python benchmarks/prepare.py [--data ../shared/data/gutenberg_nltk] [--repeats 3]

"prepare" is end to end (read + decode + split + encode + write + checksum) with a fixed
tokenizer.json, so BPE training is timed separately. Each figure is the best of --repeats runs;
other processes may share the CPU, so compare figures from the same run only.
The last line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from moelab.data import prepare
from moelab.data.sources import parse_source_spec, read_source
from moelab.data.tokenizer import DocumentEncoder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gutenberg_nltk"


CPU_S: dict[str, float] = {}  # single-process runs: best CPU seconds of this process


def best_of(repeats: int, fn, cpu_key: str | None = None) -> float:
    """Best wall seconds of ``repeats`` calls; with ``cpu_key`` also records the best CPU seconds
    of this process, which contention from other processes does not inflate."""
    times, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if cpu_key:
        CPU_S[cpu_key] = min(cpus)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} is absent; nothing to measure")
        print(json.dumps({"benchmark": "prepare", "skipped": f"{args.data} absent"}))
        return 0

    spec = f"books={args.data}/*.txt:encoding=utf-8,latin-1"
    input_bytes = sum(p.stat().st_size for p in args.data.glob("*.txt"))
    mb = input_bytes / 1e6
    docs = read_source(parse_source_spec(spec), 1 << 15).docs
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"input: {args.data} ({mb:.1f} MB, {len(docs)} documents); {cpus} CPUs visible")
    print(f"load average at start: {load:.1f} (above {cpus}, other processes compete for CPU)")
    print("note: other processes may share the CPU; figures are best of", args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        first = prepare(tmp / "train", [spec], vocab_size=args.vocab_size)
        bpe_s = time.perf_counter() - t0
        tok_json = first.path / "tokenizer.json"
        tok = Tokenizer.from_file(str(tok_json))

        runs = iter(range(10**6))
        prep_s = {
            w: best_of(
                args.repeats,
                lambda w=w: prepare(tmp / f"p{next(runs)}", [spec], tokenizer=tok_json, workers=w),
                "prepare_1proc" if w == 1 else None,
            )
            for w in (1, 2)
        }

        def encode_with(workers: int) -> None:
            with DocumentEncoder(tok, workers) as enc:
                enc.encode(docs)

        enc_s = {
            w: best_of(args.repeats, lambda w=w: encode_with(w), "encode_1proc" if w == 1 else None)
            for w in (1, 2)
        }

        def peer(parallel: bool) -> None:
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
            tok.encode_batch(docs, add_special_tokens=False)

        peer_s = {
            p: best_of(args.repeats, lambda p=p: peer(p), None if p else "peer_1thread")
            for p in (False, True)
        }
        os.environ.pop("TOKENIZERS_PARALLELISM", None)

    rows = [
        ("moelab prepare, 1 process (end to end)", prep_s[1]),
        ("moelab prepare, 2 processes (end to end)", prep_s[2]),
        ("moelab encode stage, 1 process", enc_s[1]),
        ("moelab encode stage, 2 processes", enc_s[2]),
        ("peer: tokenizers encode_batch, 1 thread", peer_s[False]),
        (f"peer: tokenizers encode_batch, rayon ({cpus} CPUs)", peer_s[True]),
    ]
    print(f"\n{'what':<52} {'seconds':>8} {'MB/s':>8}")
    for name, s in rows:
        print(f"{name:<52} {s:>8.2f} {mb / s:>8.2f}")
    print("\nper CPU-second of this process (single-process rows; robust to other load):")
    for key, cpu_s in CPU_S.items():
        print(f"  {key:<20} {mb / cpu_s:>8.2f} MB per CPU-second")
    print(f"BPE training (vocab {args.vocab_size}) + first prepare: {bpe_s:.2f} s")
    ratio = prep_s[1] / prep_s[2]
    print(f"speed-up of 2 processes over 1 (end to end): {ratio:.2f}x")
    result = {
        "benchmark": "prepare",
        "input_mb": round(mb, 3),
        "documents": len(docs),
        "cpus": cpus,
        "load_average_start": round(load, 2),
        "prepare_mb_s_1proc": round(mb / prep_s[1], 3),
        "prepare_mb_s_2proc": round(mb / prep_s[2], 3),
        "prepare_speedup_2_over_1": round(ratio, 3),
        "encode_mb_s_1proc": round(mb / enc_s[1], 3),
        "encode_mb_s_2proc": round(mb / enc_s[2], 3),
        "peer_tokenizers_mb_s_1thread": round(mb / peer_s[False], 3),
        "peer_tokenizers_mb_s_rayon": round(mb / peer_s[True], 3),
        "bpe_train_and_first_prepare_s": round(bpe_s, 3),
        **{f"{k}_mb_per_cpu_s": round(mb / v, 3) for k, v in CPU_S.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
