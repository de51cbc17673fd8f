"""Evaluate one trained run the ways the study asks for, through ``moelab.eval``.

Validation loss per domain at log-spaced steps already comes from the trainer; this adds, on the
final checkpoint: perplexity over each domain's whole validation split (optional), zero-shot
accuracy on the zero-shot tasks *and* on the few-shot tasks (the baseline of the few-shot gain),
few-shot accuracy over several seeds, and fine-tuning accuracy. The results go into the run's
``study_eval.json`` with the item counts and chance levels the report states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moelab.study.plan.config import StudyConfig, task_label


def evaluate_run(
    path: Path, cfg: StudyConfig, echo: Callable[[str], None], tasks: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluate the run in ``path``. ``tasks``: loaded tasks by name, filled as they are read;
    a caller evaluating several runs passes the same dict so each task (BLiMP's 67k pairs) is
    read once, not once per run."""
    from moelab.data import PreparedData
    from moelab.eval.finetune import finetune_run
    from moelab.eval.perplexity import run_perplexity
    from moelab.eval.priming import evaluate_task
    from moelab.eval.runs import open_run
    from moelab.eval.tasks import get_task

    tasks = {} if tasks is None else tasks

    ev = cfg.eval
    run = open_run(path, device="auto")
    data = PreparedData.open(Path(run.run_cfg.data.dir), verify=False)
    result: dict[str, Any] = {
        "in_domains": list(data.train_domains),
        "out_domains": list(data.heldout_domains),
        "checkpoint": run.checkpoint,
    }
    for part in ("zero_shot", "zero_shot_detail", "few_shot", "finetune", "eval_loss", "tasks"):
        result[part] = {}
    result["details"] = {}
    if ev.ppl:
        t0 = time.perf_counter()
        ppl = run_perplexity(path, max_tokens=ev.ppl_max_tokens, opened=run)
        result["eval_loss"] = {row["name"]: row["loss"] for row in ppl["domains"]}
        result["details"]["perplexity"] = {
            "seconds": time.perf_counter() - t0,
            "context": ppl["context"],
        }
    tdir = str(Path(ev.tasks_dir or cfg.data.root).expanduser().resolve())
    result["skipped_tasks"] = {}
    for name in dict.fromkeys(ev.zero_shot + ev.few_shot):
        optional = name in ev.optional or name.split(":", 1)[0] in ev.optional
        if optional and not task_available(name, tdir):
            why = f"not found under {tdir} (optional in this study: skipped)"
            result["skipped_tasks"][task_label(name)] = why
            echo(f"    {name}: {why}")
            continue
        if name not in tasks:
            tasks[name] = get_task(name, tdir)
        out = evaluate_task(
            run.model, run.tokenizer, tasks[name], shots=0, seeds=1, limit=_limit(name, ev)
        )
        label = task_label(name)
        result["zero_shot"][label] = out["accuracy"]
        result["zero_shot_detail"][label] = {
            k: out.get(k)
            for k in ("accuracy_ci95", "score", "score_ci95", "score_chance", "groups")
        }
        result["tasks"][label] = {
            "chance": out["chance"],
            "n_items": out["n_items"],
            "n_items_total": out["n_items_total"],
            "split": out["split"],
            "mode": out["primary_mode"],
            "score_chance": out.get("score_chance"),
            "reference": out.get("reference") or {},
            "groups_n_items": {g: v.get("n_items") for g, v in (out.get("groups") or {}).items()},
            "limit": _limit(name, ev),
        }
        result["details"][f"{label}/0-shot"] = _brief(out)
        score = out.get("score")
        echo(
            f"    {name} 0-shot: {out['accuracy']:.3f} (chance {out['chance']:.3f}, "
            f"{out['n_items']} items)"
            + (f"; score {score:.4f} (chance {out.get('score_chance'):.4f})" if score else "")
        )
    for name in ev.few_shot:
        if task_label(name) in result["skipped_tasks"]:
            continue
        out = evaluate_task(
            run.model,
            run.tokenizer,
            tasks[name],  # loaded for its zero-shot baseline above
            shots=ev.shots,
            seeds=ev.seeds,
            limit=_limit(name, ev),
            fewshot_sampling=ev.fewshot_sampling,
        )
        result["few_shot"][task_label(name)] = out["accuracy"]
        result["details"][f"{task_label(name)}/{ev.shots}-shot"] = _brief(out)
        echo(
            f"    {name} {ev.shots}-shot: {out['accuracy']:.3f} +- {out['accuracy_std']:.3f} "
            f"over {ev.seeds} seeds"
        )
    for name in ev.finetune:
        detail = finetune_run(
            str(path), name, tasks_dir=tdir, limit=ev.limit, **ev.finetune_options
        )
        detail.pop("grid", None)  # per-rate curves: kept out of the study's summary file
        acc = float(detail["accuracy"])
        result["finetune"][task_label(name)] = acc
        result["details"][f"{task_label(name)}/finetune"] = detail
        keep = ("chance", "majority_class", "n_items", "n_train", "split", "best_lr")
        result["tasks"].setdefault(f"finetune:{task_label(name)}", {k: detail.get(k) for k in keep})
        echo(f"    {name} fine-tuned: {acc:.3f}")
    return result


def _limit(name: str, ev) -> int | None:
    """Items per task; BLiMP counts its limit per paradigm (``eval.limits`` overrides any)."""
    label = task_label(name)
    return ev.limits.get(label, ev.limits.get(label.split(":", 1)[0], ev.limit))


def task_available(name: str, tasks_dir: str) -> bool:
    """Whether a registered task's folder exists (other names: let the loader decide)."""
    from moelab.eval.tasks.registry import TASKS

    spec = TASKS.get(name.split(":", 1)[0])
    if spec is None or name.startswith("hf:"):
        return True
    root = Path(tasks_dir)
    return (root / spec.folder).is_dir() or (root / spec.name).is_dir()


def _brief(out: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "shots seeds n_items accuracy accuracy_std chance primary_mode split shots_from score "
        "score_ci95 score_chance accuracy_ci95 fewshot_sampling limit_per"
    ).split()
    brief = {k: out.get(k) for k in keep}
    brief["ci95"] = out["metrics"][out["primary_mode"]]["ci95"]
    brief["seconds"] = out["compute"]["seconds"]
    return brief
