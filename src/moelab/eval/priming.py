"""Zero- and few-shot priming: score every candidate of every item and seed in one pass.

Prompts, scoring modes, statistics and the continuous score: docs/evaluation.md, "Priming".
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch

from moelab.data.tokenizer import eot_token_id
from moelab.errors import MoelabError, check_at_least_one
from moelab.eval.fewshot import check_sampling, sample_shots, shot_prefix
from moelab.eval.logprobs import BATCH_TOKENS
from moelab.eval.runs import capacity_report, forward_flops, open_run
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
from moelab.eval.stats import bootstrap_ci, correct_probability, mean_std
from moelab.eval.tasks import get_task
from moelab.eval.tasks.items import Task
from moelab.eval.tokens import make_encode
from moelab.progress import progress_bar
from moelab.train.validation import evaluation_state

DEFAULT_SEEDS_FEWSHOT = 25  # the paper averages 25 draws of examples


def check_options(
    shots: int = 0,
    seeds: int | None = None,
    limit: int | None = None,
    batch_tokens: int = BATCH_TOKENS,
    fewshot_sampling: str = "per_item",
) -> int:
    """Refuse a bad priming option in one line, before any work; the number of seeds (25 draws
    of shots by default, as the paper, and one draw without shots)."""
    if shots < 0:
        raise MoelabError(f"{{key}} must be >= 0, got {shots}", key="shots")
    n_seeds = (DEFAULT_SEEDS_FEWSHOT if shots > 0 else 1) if seeds is None else seeds
    check_at_least_one(seeds=n_seeds, limit=limit, batch_tokens=batch_tokens)
    check_sampling(fewshot_sampling)
    return n_seeds


def build_prompts(
    task: Task,
    index: int,
    shots: int,
    seed: int,
    separator: str = "\n",
    sampling: str = "per_item",
) -> list[tuple[str, str]]:
    """The exact ``(context, continuation)`` strings scored for one item and seed."""
    prefix = shot_prefix(sample_shots(task, index, shots, seed, sampling), separator)
    return task.items[index].candidates(prefix)


def calibration_prompts(task: Task, index: int) -> list[tuple[str, str]]:
    """Each candidate's continuation after the task's neutral prompt (no shots); none when the
    task has no neutral prompt."""
    if task.neutral_prompt is None:
        return []
    item = task.items[index]
    return [(task.neutral_prompt, cont) for _, cont in item.candidates()]


def task_modes(task: Task) -> tuple[str, ...]:
    if task.kind == "last_word":
        return ("greedy",)
    return tuple(m for m in MODES if m != "calibrated" or task.neutral_prompt is not None)


def primary_mode(task: Task) -> str:
    """The task's headline mode: its own (loader or registry), else "mean" (the paper's
    default; "greedy" for last-word tasks)."""
    modes = task_modes(task)
    mode = task.primary_mode or ("greedy" if task.kind == "last_word" else "mean")
    if mode not in modes:
        raise MoelabError(
            f"task {task.name}: primary scoring mode {mode!r} is not one of its modes "
            f"({', '.join(modes)})"
        )
    return mode


def selected_items(task: Task, limit: int | None) -> list[int]:
    """Indices of the evaluated items: the first ``limit`` (all when None), counted per group
    of prefix ``task.limit_per`` when the task sets one (BLiMP: pairs per paradigm)."""
    if limit is None or not task.limit_per or not task.groups:
        return list(range(len(task.items)))[:limit]
    prefix = task.limit_per + ":"
    taken: dict[str | None, int] = {}
    out = []
    for i, labels in enumerate(task.groups):
        key = next((g for g in labels if g.startswith(prefix)), None)
        if taken.get(key, 0) < limit:
            taken[key] = taken.get(key, 0) + 1
            out.append(i)
    return out


def _summary(correct_SI: np.ndarray, score_SI: np.ndarray, bootstrap: int) -> dict[str, Any]:
    """Accuracy and score of a [seed, item] block: means, intervals over items."""
    acc_lo, acc_hi = bootstrap_ci(correct_SI.mean(axis=0), n_resamples=bootstrap)
    sc_lo, sc_hi = bootstrap_ci(score_SI.mean(axis=0), n_resamples=bootstrap)
    return {
        "accuracy": float(correct_SI.mean()),
        "score": float(score_SI.mean()),
        "n_items": int(correct_SI.shape[1]),
        "accuracy_ci95": [acc_lo, acc_hi],
        "score_ci95": [sc_lo, sc_hi],
    }


def evaluate_task(
    model: torch.nn.Module | None,
    tokenizer: Any,
    task: Task,
    shots: int = 0,
    seeds: int | None = None,
    limit: int | None = None,
    *,
    separator: str = "\n",
    max_len: int | None = None,
    device: torch.device | str | None = None,
    batch_tokens: int = BATCH_TOKENS,
    logits_at: LogitsAt | None = None,
    prefix_id: int | None = None,
    bootstrap: int = 1000,
    progress: bool = False,
    keep_scores: bool = False,
    share_contexts: bool = True,
    min_shared_tokens: int = 1024,
    fewshot_sampling: str = "per_item",
) -> dict[str, Any]:
    """Accuracy of ``model`` on ``task`` primed with ``shots`` examples, over ``seeds`` draws.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or a ``str -> ids`` callable, then give
    ``prefix_id``). ``logits_at`` replaces the model for scoring (then ``model`` may be None and
    ``max_len`` is required). With ``keep_scores`` the result holds ``scores[seed][item]``: every
    mode's score per candidate (LAMBADA: the last word's log-prob and greedy hit).
    ``limit`` keeps the first N items (per paradigm for BLiMP, ``Task.limit_per``). The model is
    left as it was given (train/eval flags, MoE capacity). Returns a plain dict; its fields,
    ``share_contexts`` and ``fewshot_sampling``: docs/evaluation.md, "Priming".
    """
    n_seeds = check_options(shots, seeds, limit, batch_tokens, fewshot_sampling)
    primary = primary_mode(task)
    modes = task_modes(task)
    indices = selected_items(task, limit)
    n_items = len(indices)
    seed_list = list(range(n_seeds))
    encode = make_encode(tokenizer)
    if prefix_id is None:
        prefix_id = eot_token_id(tokenizer, default=0)
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
    @functools.cache
    def request(pair: tuple[str, str]) -> Request:
        return Request(*encode_pair(encode, pair[0], pair[1], prefix_id))

    def prompts(i: int, seed: int) -> list[tuple[str, str]]:
        return build_prompts(task, i, shots, seed, separator, fewshot_sampling)

    # plan[seed][item][candidate]
    plan = [[[request(p) for p in prompts(i, seed)] for i in indices] for seed in seed_list]
    last_word = task.kind == "last_word"  # no candidates to compare: nothing to calibrate
    calib = [
        [] if last_word else [request(p) for p in calibration_prompts(task, i)] for i in indices
    ]
    flat = [r for seed_plan in plan for item in seed_plan for r in item]
    flat += [r for item in calib for r in item]
    unique = list(dict.fromkeys(flat))

    # 2) one pass over the model
    with progress_bar(len(unique), f"{task.name} {shots}-shot", progress) as advance:
        with evaluation_state(model):
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
    scored = dict(zip(unique, scored_list))
    seconds = time.perf_counter() - t0

    # 3) accuracy and continuous score per mode, seed and item
    shape = (len(seed_list), n_items)
    correct = {m: np.zeros(shape) for m in modes}
    prob = {m: np.zeros(shape) for m in modes}  # probability given to the correct candidate(s)
    logprob_sum = np.zeros(shape)
    kept: list[list[dict[str, list[float]]]] = [[] for _ in seed_list]
    for s in range(len(seed_list)):
        for n, i in enumerate(indices):
            item = task.items[i]
            reqs = plan[s][n]
            if last_word:
                sc = scored[reqs[0]]
                correct["greedy"][s, n] = float(sc.greedy)
                logprob_sum[s, n] = float(sc.logprobs.sum())
                # the probability of the whole last word: LAMBADA's continuous score
                prob["greedy"][s, n] = float(np.exp(logprob_sum[s, n]))
                if keep_scores:
                    kept[s].append({"logprob": [logprob_sum[s, n]], "greedy": [sc.greedy]})
                continue
            cands = [
                Candidate(r, scored[r], item.target(j), scored[calib[n][j]] if calib[n] else None)
                for j, r in enumerate(reqs)
            ]
            by_mode = {m: v for m, v in candidate_scores(cands).items() if m in modes}
            gold = item.correct
            for mode, values in by_mode.items():
                correct[mode][s, n] = float(int(np.argmax(values)) in gold)
                prob[mode][s, n] = correct_probability(values, gold)
            if keep_scores:
                kept[s].append({m: v.tolist() for m, v in by_mode.items()})
            logprob_sum[s, n] = float(scored[reqs[item.label]].logprobs.sum())

    metrics = {}
    for mode in modes:
        per_seed = correct[mode].mean(axis=1).tolist()
        mean, std = mean_std(per_seed)
        metrics[mode] = {
            "per_seed": per_seed,
            "mean": mean,
            "std": std,
            "ci95": list(bootstrap_ci(correct[mode].mean(axis=0), n_resamples=bootstrap)),
            "score": float(prob[mode].mean()),
        }
    score_per_seed = prob[primary].mean(axis=1).tolist()
    score_mean, score_std = mean_std(score_per_seed)
    chance = 0.0 if last_word else float(np.mean([task.items[i].chance for i in indices]))
    groups = {}
    if task.groups:
        members: dict[str, list[int]] = {}
        for n, i in enumerate(indices):
            for label in task.groups[i]:
                members.setdefault(label, []).append(n)
        for label in sorted(members):
            cols = members[label]
            groups[label] = _summary(correct[primary][:, cols], prob[primary][:, cols], bootstrap)
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
        "limit": limit,
        "limit_per": task.limit_per if limit is not None else None,
        "fewshot_sampling": fewshot_sampling if shots else None,
        "separator": separator,
        "primary_mode": primary,
        "accuracy": metrics[primary]["mean"],
        "accuracy_std": metrics[primary]["std"],
        "accuracy_ci95": metrics[primary]["ci95"],
        "score": score_mean,
        "score_std": score_std,
        "score_per_seed": score_per_seed,
        "score_ci95": list(bootstrap_ci(prob[primary].mean(axis=0), n_resamples=bootstrap)),
        "score_chance": chance,  # softmax over indifferent candidates: |correct| / n per item
        "chance": chance,
        "metrics": metrics,
        "groups": groups,
        "reference": task.reference,
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


def example_prompts(
    task: Task,
    shots: int,
    seed: int = 0,
    index: int = 0,
    separator: str = "\n",
    sampling: str = "per_item",
):
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
            for c, k in build_prompts(task, index, shots, seed, separator, sampling)
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
    batch_tokens: int = BATCH_TOKENS,
    device: str | None = None,
    progress: bool = False,
    show_prompt: bool = False,
    opened=None,
    fewshot_sampling: str = "per_item",
) -> list[dict[str, Any]]:
    """Priming accuracy of a run's newest checkpoint on each task (a name, a path or a loaded
    :class:`Task`). MoE layers are dropless unless ``capacity_factor`` is given (for these
    evaluations only: the model gets its own factors back). With ``show_prompt`` each result
    carries ``example_prompts`` (the first item, seed 0)."""

    check_options(shots, seeds, limit, batch_tokens, fewshot_sampling)
    # every task file is checked before any model work
    loaded = [t if isinstance(t, Task) else get_task(t, tasks_dir) for t in tasks]
    run = opened or open_run(run_dir, step=step, device=device)
    results = []
    with evaluation_state(run.model, capacity_factor):
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
                fewshot_sampling=fewshot_sampling,
            )
            result["run_dir"] = str(run.run_dir)
            result["checkpoint"] = run.checkpoint
            result["capacity"] = capacity_report(run.model)
            if show_prompt:
                result["example_prompts"] = example_prompts(
                    task, shots, separator=separator, sampling=fewshot_sampling
                )
            results.append(result)
    return results
