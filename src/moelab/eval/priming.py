"""Zero- and few-shot priming: score every candidate of every item and seed in one pass.

``evaluate_task`` builds all prompts (k shots per item and seed, plus the neutral calibration
prompt per candidate), tokenizes them the harness's way, scores the unique sequences in batches
and reports accuracy under every scoring mode, per seed, with mean/std over seeds, a bootstrap
95% interval over items and the task's chance level.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from moelab.errors import MoelabError
from moelab.eval.fewshot import sample_shots, shot_prefix
from moelab.eval.progress import progress_bar
from moelab.eval.runs import forward_flops
from moelab.eval.scoring import (
    MODES,
    Candidate,
    ForwardStats,
    LogitsAt,
    Request,
    candidate_scores,
    encode_pair,
    model_logits_at,
    score_requests,
)
from moelab.eval.stats import bootstrap_ci, mean_std
from moelab.eval.tasks.items import Task
from moelab.eval.tokens import eot_id, make_encode

DEFAULT_SEEDS_FEWSHOT = 25  # the paper averages 25 draws of examples


def default_seeds(shots: int) -> int:
    return DEFAULT_SEEDS_FEWSHOT if shots > 0 else 1


def build_prompts(
    task: Task, index: int, shots: int, seed: int, separator: str = "\n"
) -> list[tuple[str, str]]:
    """The exact ``(context, continuation)`` strings scored for one item and seed."""
    prefix = shot_prefix(sample_shots(task, index, shots, seed), separator)
    return task.items[index].candidates(prefix)


def calibration_prompts(task: Task, index: int) -> list[tuple[str, str]]:
    """Each candidate's continuation after the task's neutral prompt (no shots)."""
    item = task.items[index]
    return [(task.neutral_prompt, cont) for _, cont in item.candidates()]


def evaluate_task(
    model: torch.nn.Module | None,
    tokenizer: Any,
    task: Task,
    shots: int = 0,
    seeds: int | None = None,
    limit: int | None = None,
    *,
    separator: str = "\n",
    seed_base: int = 0,
    max_len: int | None = None,
    device: torch.device | str | None = None,
    batch_tokens: int = 8192,
    logits_at: LogitsAt | None = None,
    prefix_id: int | None = None,
    bootstrap: int = 1000,
    progress: bool = False,
    keep_scores: bool = False,
    share_contexts: bool = True,
    min_shared_tokens: int = 1024,
) -> dict[str, Any]:
    """Accuracy of ``model`` on ``task`` primed with ``shots`` examples, over ``seeds`` draws.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or a ``str -> ids`` callable, then give
    ``prefix_id``). ``logits_at`` replaces the model for scoring (then ``model`` may be None and
    ``max_len`` is required). With ``keep_scores`` the result holds ``scores[seed][item]``: every
    mode's score per candidate (LAMBADA: the last word's log-prob and greedy hit). Returns a
    plain dict (see docs/evaluation.md). ``share_contexts`` runs a context shared by several
    candidates once into a KV cache when that saves at least ``min_shared_tokens`` tokens
    (moelab models only; the scores are the same). Below that, one packed batch of full
    sequences is faster: a forward call per context costs more than the tokens it saves."""
    if shots < 0:
        raise MoelabError(f"--shots must be >= 0, got {shots}")
    n_seeds = default_seeds(shots) if seeds is None else seeds
    if n_seeds < 1:
        raise MoelabError(f"--seeds must be >= 1, got {n_seeds}")
    if limit is not None and limit < 1:
        raise MoelabError(f"--limit must be >= 1, got {limit}")
    n_items = len(task.items) if limit is None else min(limit, len(task.items))
    seed_list = [seed_base + s for s in range(n_seeds)]
    encode = make_encode(tokenizer)
    if prefix_id is None:
        prefix_id = eot_id(tokenizer)
    stats = ForwardStats()
    own_model = logits_at is None
    if logits_at is None:
        if model is None:
            raise MoelabError("evaluate_task needs a model or a logits_at function")
        logits_at = model_logits_at(model, stats)
        device = device if device is not None else next(model.parameters()).device
        max_len = max_len or model.cfg.max_seq_len
    if max_len is None:
        raise MoelabError("evaluate_task: max_len is required with a custom logits_at")
    device = device if device is not None else "cpu"

    t0 = time.perf_counter()
    # 1) every (seed, item, candidate) request plus one calibration request per candidate
    pair_ids: dict[tuple[str, str], Request] = {}

    def request(pair: tuple[str, str]) -> Request:
        r = pair_ids.get(pair)
        if r is None:
            r = Request(*encode_pair(encode, pair[0], pair[1], prefix_id))
            pair_ids[pair] = r
        return r

    plan: list[list[list[Request]]] = []  # [seed][item][candidate]
    for seed in seed_list:
        plan.append(
            [
                [request(p) for p in build_prompts(task, i, shots, seed, separator)]
                for i in range(n_items)
            ]
        )
    calib = [[request(p) for p in calibration_prompts(task, i)] for i in range(n_items)]
    if task.kind == "last_word":
        calib = [[] for _ in range(n_items)]  # no candidates to compare: nothing to calibrate
    flat = [r for seed_plan in plan for item in seed_plan for r in item]
    flat += [r for item in calib for r in item]
    unique = list(dict.fromkeys(flat))

    # 2) one pass over the model
    with progress_bar(len(unique), f"{task.name} {shots}-shot", progress) as advance:
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        try:
            scored_list = score_requests(
                unique,
                logits_at,
                max_len=max_len,
                device=device,
                batch_tokens=batch_tokens,
                pad_id=prefix_id,
                stats=stats,
                progress=advance,
                shared_model=model if (share_contexts and own_model) else None,
                min_shared_tokens=min_shared_tokens,
            )
        finally:
            if model is not None and was_training:
                model.train()
    scored = dict(zip(unique, scored_list))
    seconds = time.perf_counter() - t0

    # 3) accuracy per mode, seed and item
    modes = ("greedy",) if task.kind == "last_word" else MODES
    correct = {m: np.zeros((len(seed_list), n_items)) for m in modes}
    logprob_sum = np.zeros((len(seed_list), n_items))
    kept: list[list[dict[str, list[float]]]] = [[] for _ in seed_list]
    for s in range(len(seed_list)):
        for i in range(n_items):
            item = task.items[i]
            reqs = plan[s][i]
            if task.kind == "last_word":
                sc = scored[reqs[0]]
                correct["greedy"][s, i] = float(sc.greedy)
                logprob_sum[s, i] = float(sc.logprobs.sum())
                if keep_scores:
                    kept[s].append({"logprob": [logprob_sum[s, i]], "greedy": [sc.greedy]})
                continue
            cands = [
                Candidate(r, scored[r], item.target(j), scored[calib[i][j]])
                for j, r in enumerate(reqs)
            ]
            by_mode = candidate_scores(cands)
            for mode, values in by_mode.items():
                correct[mode][s, i] = float(int(np.argmax(values)) == item.label)
            if keep_scores:
                kept[s].append({m: v.tolist() for m, v in by_mode.items()})
            logprob_sum[s, i] = float(scored[reqs[item.label]].logprobs.sum())

    metrics = {}
    for mode in modes:
        per_seed = correct[mode].mean(axis=1).tolist()
        mean, std = mean_std(per_seed)
        lo, hi = bootstrap_ci(correct[mode].mean(axis=0), n_resamples=bootstrap)
        metrics[mode] = {"per_seed": per_seed, "mean": mean, "std": std, "ci95": [lo, hi]}
    primary = "greedy" if task.kind == "last_word" else "mean"
    sub = task.items[:n_items]
    chance = (
        0.0 if task.kind == "last_word" else float(np.mean([1 / it.n_candidates for it in sub]))
    )
    return {
        "kind": "priming",
        "mode": "few-shot" if shots else "zero-shot",
        "task": task.name,
        "task_kind": task.kind,
        "split": task.split,
        "shots_from": (task.train_split or task.split) if shots else None,
        "shots": shots,
        "seeds": seed_list,
        "n_items": n_items,
        "n_items_total": len(task.items),
        "separator": separator,
        "primary_mode": primary,
        "accuracy": metrics[primary]["mean"],
        "accuracy_std": metrics[primary]["std"],
        "chance": chance,
        "metrics": metrics,
        "gold_logprob_mean": float(logprob_sum.mean()),
        "compute": {
            "seconds": seconds,
            "requests": len(flat),
            "unique_sequences": len(unique),
            "forward_tokens": stats.tokens,
            "padded_tokens": stats.padded_tokens,
            "batches": stats.batches,
            "forward_flops_estimate": forward_flops(model, stats.tokens, stats.sequences),
            "shared_contexts": bool(share_contexts and own_model),
            "moe_capacity_last_batch": stats.capacity,
            "moe_max_dropped_frac": stats.max_dropped_frac,
            "items_per_second": n_items * len(seed_list) / seconds if seconds > 0 else None,
        },
        "sources": task.sources,
        **({"scores": kept} if keep_scores else {}),
    }


def example_prompts(task: Task, shots: int, seed: int = 0, index: int = 0, separator: str = "\n"):
    """The exact strings scored for one item: its candidates and calibration prompts."""
    if not task.items:
        raise MoelabError(f"task {task.name} has no items")
    return {
        "task": task.name,
        "item": index,
        "seed": seed,
        "label": task.items[index].label,
        "candidates": [
            {"context": c, "continuation": k}
            for c, k in build_prompts(task, index, shots, seed, separator)
        ],
        "calibration": [
            {"context": c, "continuation": k} for c, k in calibration_prompts(task, index)
        ],
    }


def run_priming(
    run_dir: str,
    tasks: list[str | Task],
    shots: int = 0,
    seeds: int | None = None,
    limit: int | None = None,
    *,
    tasks_dir: str | None = None,
    separator: str = "\n",
    step: int | None = None,
    capacity_factor: float | None = None,
    batch_tokens: int = 8192,
    device: str | None = None,
    progress: bool = False,
    show_prompt: bool = False,
    opened=None,
) -> list[dict[str, Any]]:
    """Priming accuracy of a run's newest checkpoint on each task (a name, a path or a loaded
    :class:`Task`). MoE layers are dropless unless ``capacity_factor`` is given. With
    ``show_prompt`` each result carries ``example_prompts`` (the first item, seed 0)."""
    from moelab.eval.runs import capacity_report, open_run, set_capacity
    from moelab.eval.tasks import get_task

    # every task file is checked before any model work
    loaded = [t if isinstance(t, Task) else get_task(t, tasks_dir) for t in tasks]
    run = opened or open_run(run_dir, step=step, device=device)
    set_capacity(run.model, eval_factor=capacity_factor, train_factor=capacity_factor)
    results = []
    for task in loaded:
        result = evaluate_task(
            run.model,
            run.tokenizer,
            task,
            shots,
            seeds,
            limit,
            separator=separator,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        result["run_dir"] = str(run.run_dir)
        result["checkpoint"] = run.checkpoint
        result["capacity"] = capacity_report(run.model)
        if show_prompt:
            result["example_prompts"] = example_prompts(task, shots, separator=separator)
        results.append(result)
    return results
