"""`moelab eval RUN_DIR --ppl [PATH ...] | --task NAME_OR_JSONL ...`: perplexity and priming."""

from __future__ import annotations

import json

from moelab.errors import MoelabError
from moelab.eval.logprobs import BATCH_TOKENS
from moelab.eval.perplexity import BATCH_SIZE

# The library's names of arguments whose flag is called otherwise (the CLI shows the flag).
RENAMED = {"paths": "ppl"}


def unescape(text: str) -> str:
    """A backslash-n typed on a command line becomes a newline (backslash-t a tab)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run folder")
    parser.add_argument(
        "--ppl",
        nargs="*",
        metavar="PATH",
        help="perplexity; no PATH: every validation domain of the run's data; PATHs: text "
        "files, globs (quote them) or prepared data folders",
    )
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME_OR_JSONL",
        help="priming task: a registered name (see docs/evaluation.md: hellaswag, piqa, "
        "winogrande, storycloze, copa, lambada, boolq, sst2, rte, cb, mrpc, blimp, ...; "
        "blimp:PARADIGM or blimp:FIELD for a part of BLiMP), hf:NAME for the official Hugging "
        "Face split (needs `datasets`), or a generic .jsonl file; repeatable",
    )
    parser.add_argument("--shots", type=int, default=0, help="examples in the prompt (default 0)")
    parser.add_argument(
        "--seeds",
        type=int,
        help="draws of examples (default 25 when --shots > 0, else 1)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="evaluate only the first N items (BLiMP: the first N pairs of every paradigm)",
    )
    parser.add_argument(
        "--fewshot-sampling",
        choices=("per_item", "per_run"),
        default="per_item",
        help="per_item (default): every item draws its own shots; per_run: one draw per seed, "
        "the same shots for every item (fairseq's few-shot trials)",
    )
    parser.add_argument(
        "--tasks-dir",
        help="folder holding the task folders (default: $MOELAB_TASKS_DIR)",
    )
    parser.add_argument("--separator", default="\\n", help="text between shots (default \\n)")
    parser.add_argument(
        "--show-prompt",
        action="store_true",
        help="print the exact prompts of the first item (seed 0) of each task",
    )
    parser.add_argument(
        "--context",
        type=int,
        help="perplexity window in tokens (default: the model's context)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        help="perplexity window step (default: the context, i.e. no overlap; smaller = sliding)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="perplexity: score at most N tokens per domain or file",
    )
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="perplexity windows per batch"
    )
    parser.add_argument(
        "--batch-tokens", type=int, default=BATCH_TOKENS, help="priming: padded tokens per batch"
    )
    parser.add_argument(
        "--capacity-factor",
        help="MoE capacity factor at evaluation (default: dropless)",
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default newest)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args) -> int:
    from moelab.eval import perplexity, priming
    from moelab.eval.results import check_eval_dir, perplexity_table, priming_rows, write_result
    from moelab.eval.runs import open_run, parse_capacity
    from moelab.eval.tasks import get_task

    if args.ppl is None and not args.task:
        raise MoelabError("nothing to evaluate: give --ppl [PATH ...] and/or --task NAME")
    # every option is checked before any work, so a refusal leaves no result half-written
    perplexity.check_options(args.context, args.stride, args.batch_size, args.max_tokens)
    priming.check_options(args.shots, args.seeds, args.limit, args.batch_tokens)
    separator = unescape(args.separator)
    capacity = parse_capacity(args.capacity_factor)
    check_eval_dir(args.run_dir)
    tasks = [get_task(t, args.tasks_dir) for t in args.task]  # bad task files fail before loading
    perplexity.check_inputs(args.ppl or [])  # so do bad text files and crafted prepared folders
    run_ = open_run(args.run_dir, step=args.step, device=args.device)
    show_progress = not args.json
    results = []
    if args.ppl is not None:
        result = perplexity.run_perplexity(
            args.run_dir,
            args.ppl,
            context=args.context,
            stride=args.stride,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            capacity_factor=capacity,
            progress=show_progress,
            opened=run_,
        )
        write_result(args.run_dir, result)
        results.append(result)
        if not args.json:
            print(perplexity_table(result))
    if tasks:
        primed = priming.run_priming(
            args.run_dir,
            tasks,
            args.shots,
            args.seeds,
            args.limit,
            separator=separator,
            capacity_factor=capacity,
            batch_tokens=args.batch_tokens,
            progress=show_progress,
            show_prompt=args.show_prompt,
            opened=run_,
            fewshot_sampling=args.fewshot_sampling,
        )
        for result in primed:
            write_result(args.run_dir, result)
            if args.show_prompt and not args.json:
                _print_prompts(result["example_prompts"])
        results += primed
        if not args.json:
            print(priming_rows(primed))
    if args.json:
        doc = {"run_dir": args.run_dir, "checkpoint": run_.checkpoint, "results": results}
        print(json.dumps(doc, indent=2))
    else:
        # Said only now, with the result: a refusal after loading stays one stderr line, and
        # the step evaluated is never a guess (an older checkpoint may have been used).
        print(loaded_line(args.run_dir, run_.checkpoint))
        for r in results:
            print(f"wrote {r['file']}")
    return 0


def loaded_line(run_dir, checkpoint: dict) -> str:
    """``RUN: checkpoint step N`` from the loaded checkpoint's own meta.json (eval, finetune)."""
    return f"{run_dir}: checkpoint step {checkpoint.get('step')}"


def _print_prompts(shown: dict) -> None:
    print(
        f"--- {shown['task']}: item {shown['item']}, seed {shown['seed']}, label {shown['label']}"
    )
    for i, c in enumerate(shown["candidates"]):
        print(
            f"[candidate {i}] context:\n{c['context']}\n[candidate {i}] continuation: "
            f"{c['continuation']!r}"
        )
    for i, c in enumerate(shown["calibration"]):
        print(f"[calibration {i}] {c['context']!r} + {c['continuation']!r}")
    print("---")
