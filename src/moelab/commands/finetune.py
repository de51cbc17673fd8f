"""`moelab finetune RUN_DIR --task NAME`: full-parameter fine-tuning with a task head."""

from __future__ import annotations

import json

from moelab.commands import add_settings, settings_of
from moelab.errors import MoelabError
from moelab.eval.finetune import FinetuneSettings, finetune_run


def _lrs(value: str | tuple[float, ...]) -> tuple[float, ...]:
    """--lrs as typed (comma-separated), or the default grid as it is."""
    if not isinstance(value, str):
        return value
    try:
        values = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise MoelabError(
            f"{{key}} {value!r}: expected comma-separated numbers, e.g. 1e-5,3e-5", "lrs"
        ) from None
    if not values:
        raise MoelabError("{key}: give at least one learning rate", "lrs")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run folder")
    parser.add_argument(
        "--task",
        required=True,
        metavar="NAME_OR_JSONL",
        help="sst2, rte, cb, boolq, mrpc, mnli (classification head; mnli also reports "
        "dev_mismatched); copa, piqa, storycloze, hellaswag, winogrande, openbookqa or a generic "
        ".jsonl with a .train.jsonl (choice head)",
    )
    add_settings(
        parser,
        FinetuneSettings,
        {
            "epochs": "passes over the training items",
            "batch_size": "sequences per step",
            "lrs": "learning-rate grid, the same for every model",
            "seed": "seed of the head, the order and the held-out split",
            "heldout_fraction": "share of the train split held out to choose the learning rate",
            "max_len": "tokens per sequence (default: the model's context)",
        },
        lrs=str,
        max_len=int,
    )
    parser.add_argument("--limit", type=int, help="validation items to score")
    parser.add_argument("--train-limit", type=int, help="training items to use")
    parser.add_argument(
        "--capacity-factor",
        help="MoE capacity factor while fine-tuning and evaluating (default: dropless)",
    )
    parser.add_argument(
        "--tasks-dir",
        help="folder holding the task folders (default: $MOELAB_TASKS_DIR)",
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default newest)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args) -> int:
    from moelab.commands.eval import loaded_line
    from moelab.eval.results import check_eval_dir, finetune_table, write_result
    from moelab.eval.runs import parse_capacity
    from moelab.eval.tasks import get_task

    capacity = parse_capacity(args.capacity_factor) if args.capacity_factor else None
    settings = settings_of(args, FinetuneSettings, capacity_factor=capacity, lrs=_lrs(args.lrs))
    settings.validate()
    check_eval_dir(args.run_dir)
    task = get_task(args.task, args.tasks_dir)
    result = finetune_run(
        args.run_dir,
        task,
        settings,
        step=args.step,
        limit=args.limit,
        train_limit=args.train_limit,
        device=args.device,
        progress=not args.json,
    )
    write_result(args.run_dir, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(finetune_table(result))
        for name, split in result["splits"].items():  # further labelled splits (MNLI mismatched)
            if name != result["split"]:
                acc = 100 * split["accuracy"]
                print(f"{name}: accuracy {acc:.1f} ({split['n_items']} items, same model)")
        print(loaded_line(args.run_dir, result["checkpoint"]))  # --json: in result["checkpoint"]
        print(f"wrote {result['file']}")
    return 0
