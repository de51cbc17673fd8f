"""lm-evaluation-harness throughput: moelab's adapter vs the harness's Hugging Face backend.

One model, two ways through the same harness run: ``MoelabLM`` over the moelab run folder, and
``HFLM`` (model ``hf``) over that run exported with ``moelab export`` (XGLM for the paper arch,
Llama / Mixtral for the modern arch). The task is a synthetic multiple-choice task written as a
local YAML + JSONL (4 choices per item, so 4 log-likelihood requests per item). Both backends
get the same batch size; each is timed over whole ``simple_evaluate`` calls (task building,
tokenization, scoring, metrics), alternating, and the best round counts. The harness's
environment report (torch's collect_env, which shells out to pip) is skipped for both.

    python benchmarks/harness_throughput.py                      # paper dense (XGLM)
    python benchmarks/harness_throughput.py --arch modern --experts 8   # Mixtral

Other processes may share the CPU: compare the ratio measured in one run, not absolute items/s
across runs. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDS = (
    "the a river forest cat dog bird sings runs quietly loudly over under near house garden "
    "small large old young green blue light dark morning evening walks sleeps watches jumps"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_tokenizer(folder: Path, vocab: int) -> Path:
    from moelab.data.tokenizer import train_bpe

    rng = random.Random(0)
    tok = train_bpe((sentence(rng, 40) + "." for _ in range(2000)), vocab)
    path = folder / "tokenizer.json"
    path.write_text(tok.to_str(), encoding="utf-8")
    return path


def make_run(folder: Path, args, tokenizer: Path) -> Path:
    from moelab.config import ModelConfig
    from moelab.interop.hf_import import write_run_files
    from moelab.model import build_model
    from moelab.train.config import DataSection, RunConfig, TrainConfig

    cfg = ModelConfig(
        name="bench",
        arch=args.arch,
        vocab_size=args.vocab,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.d_model // 32,
        d_ffn=4 * args.d_model,
        max_seq_len=256,
        dropout=0.0,
        attn_dropout=0.0,
        n_experts=args.experts,
        moe_every=1 if args.arch == "modern" else 2,
        top_k=2,
    ).validate()
    model = build_model(cfg, seed=0)
    run_cfg = RunConfig(cfg, DataSection(dir=str(folder)), TrainConfig(budget_steps=1))
    run = folder / "run"
    write_run_files(run, model, run_cfg, tokenizer.read_bytes(), {"step": 0, "tokens": 0})
    return run


def make_task(folder: Path, n_items: int) -> tuple[str, Path]:
    rng = random.Random(1)
    data = folder / "mc.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(n_items):
            item = {
                "context": sentence(rng, rng.randint(20, 60)),
                "choices": [sentence(rng, rng.randint(3, 12)) + "." for _ in range(4)],
                "label": rng.randrange(4),
            }
            f.write(json.dumps(item) + "\n")
    name = "moelab_bench_mc"
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {folder / 'cache'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        'target_delimiter: " "\nmetric_list:\n'
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return name, folder


def harness_run(lm, task: str, task_dir: Path) -> tuple[float, dict, list[list[float]]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, num_fewshot=0, log_samples=True
    )
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return seconds, out["results"][task], lls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["paper", "modern"], default="paper")
    p.add_argument("--experts", type=int, default=0, help="0 = dense (modern MoE: every layer)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads per "
        "process thrash and measure the neighbours; 0 = torch's default)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import datasets
    import lm_eval.evaluator
    import transformers
    from lm_eval.models.huggingface import HFLM

    from moelab.interop import export_hf
    from moelab.interop.lm_eval_adapter import MoelabLM

    lm_eval.evaluator.add_env_info = lambda results: None  # same for both; see the docstring
    datasets.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")
    transformers.utils.logging.set_verbosity_error()

    with tempfile.TemporaryDirectory(prefix="moelab_harness_bench_") as tmp:
        root = Path(tmp)
        run = make_run(root, args, make_tokenizer(root, args.vocab))
        exported = export_hf(run, root / "hf")
        task, task_dir = make_task(root, args.items)
        ours = MoelabLM(run_dir=str(run), batch_size=args.batch_size, device="cpu")
        theirs = HFLM(
            pretrained=str(root / "hf"), batch_size=args.batch_size, device="cpu", dtype="float32"
        )
        times: dict[str, list[float]] = {"moelab": [], "hf": []}
        for _ in range(args.rounds):
            t_ours, res_ours, ll_ours = harness_run(ours, task, task_dir)
            t_hf, res_hf, ll_hf = harness_run(theirs, task, task_dir)
            times["moelab"].append(t_ours)
            times["hf"].append(t_hf)

    best = {k: min(v) for k, v in times.items()}
    ips = {k: args.items / best[k] for k in best}
    max_ll_diff = float(np.abs(np.array(ll_ours) - np.array(ll_hf)).max())
    ratio = ips["moelab"] / ips["hf"]
    print(f"harness throughput, {args.items} items x 4 choices, batch {args.batch_size}")
    print(
        f"model: {args.arch} L={args.layers} D={args.d_model} experts={args.experts} "
        f"-> HF class {exported.hf_class}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()} (other processes may share the CPU)"
    )
    print(f"{'backend':<18}{'best s':>10}{'items/s':>12}{'acc':>8}{'acc_norm':>10}")
    for key, res in (("moelab", res_ours), ("hf", res_hf)):
        name = "moelab adapter" if key == "moelab" else "harness HF (hf)"
        print(
            f"{name:<18}{best[key]:>10.3f}{ips[key]:>12.1f}"
            f"{res['acc,none']:>8.3f}{res['acc_norm,none']:>10.3f}"
        )
    print(f"ratio moelab / hf items/s: {ratio:.2f}; max |loglik diff| {max_ll_diff:.2e}")
    print(
        json.dumps(
            {
                "benchmark": "harness_throughput",
                "arch": args.arch,
                "experts": args.experts,
                "hf_class": exported.hf_class,
                "items": args.items,
                "batch_size": args.batch_size,
                "moelab_items_per_s": ips["moelab"],
                "hf_items_per_s": ips["hf"],
                "ratio_moelab_over_hf": ratio,
                "moelab_seconds": times["moelab"],
                "hf_seconds": times["hf"],
                "same_acc": res_ours["acc,none"] == res_hf["acc,none"],
                "same_acc_norm": res_ours["acc_norm,none"] == res_hf["acc_norm,none"],
                "max_abs_loglik_diff": max_ll_diff,
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
