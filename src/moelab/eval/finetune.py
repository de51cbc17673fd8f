"""Full-parameter fine-tuning with a task head, the paper's third evaluation.

Heads, learning-rate grid and selection, reported splits: docs/evaluation.md, "Fine-tuning".
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moelab.config import from_dict
from moelab.data.tokenizer import eot_token_id
from moelab.errors import MoelabError, check_at_least_one
from moelab.eval.runs import capacity_report, open_run
from moelab.eval.tasks import get_task
from moelab.eval.tasks.items import Item, Task
from moelab.eval.tokens import make_encode
from moelab.progress import progress_bar
from moelab.train.optim import param_groups
from moelab.train.validation import set_capacity

DEFAULT_LRS = (1e-5, 3e-5, 1e-4)


@dataclass
class FinetuneSettings:
    """Fine-tuning's settings and their one set of defaults (``moelab finetune``'s flags too)."""

    epochs: int = 3
    batch_size: int = 16
    lrs: tuple[float, ...] = DEFAULT_LRS  # the grid, the same for every model
    seed: int = 0
    heldout_fraction: float = 0.1  # of the train split, for choosing the learning rate
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_len: int | None = None  # tokens per sequence (default: the model's context)
    capacity_factor: float | None = None  # None: dropless MoE

    def validate(self) -> FinetuneSettings:
        check_at_least_one(epochs=self.epochs, batch_size=self.batch_size, max_len=self.max_len)
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise MoelabError(f"{{key}} must be positive numbers, got {list(self.lrs)}", "lrs")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise MoelabError(
                f"{{key}} must be in (0, 1), got {self.heldout_fraction}", "heldout_fraction"
            )
        return self


def task_head(d_model: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """Linear head on a hidden state: ``n_out`` classes, or 1 score per candidate."""
    head = nn.Linear(d_model, n_out)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return head


def _sequences(item: Item, head: str, encode, eot: int, max_len: int) -> list[list[int]]:
    """Token ids fed to the model for one item: one sequence (classify) or one per candidate."""
    if head == "classify":
        texts = [item.context(0)]
    else:
        texts = [c + k for c, k in item.candidates()]
    return [encode(t)[-max_len:] or [eot] for t in texts]


def _last_hidden(model, seqs: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Final hidden state at each sequence's last token, (N, D), plus the MoE losses."""
    T = max(len(s) for s in seqs)
    tokens_BT = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        tokens_BT[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    out = model(tokens_BT.to(device), return_hidden=True, return_logits=False, moe_stats=False)
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    h_ND = out.hidden_BTD[torch.arange(len(seqs), device=device), last]
    return h_ND, out.aux_loss, out.z_loss


def _batch_logits(model, head_mod, items, head, encode, eot, max_len, device):
    """Logits (B, n_classes) for classify; for choice a list of (n_candidates,) tensors."""
    seqs, owners = [], []
    for it in items:
        s = _sequences(it, head, encode, eot, max_len)
        owners.append((len(seqs), len(s)))
        seqs += s
    h_ND, aux, z = _last_hidden(model, seqs, eot, device)
    scores = head_mod(h_ND.float())
    if head == "classify":
        return scores, aux, z
    return [scores[a : a + n, 0] for a, n in owners], aux, z


def _loss(logits, items, head) -> torch.Tensor:
    if head == "classify":
        labels = torch.tensor([it.label for it in items], device=logits.device)
        return F.cross_entropy(logits, labels)
    losses = [
        F.cross_entropy(s[None, :], torch.tensor([it.label], device=s.device))
        for s, it in zip(logits, items)
    ]
    return torch.stack(losses).mean()


def evaluate_items(
    model, head_mod, items, head, encode, eot, max_len, device, batch_size
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy of the gold candidate or class) on ``items``."""
    if not items:
        return float("nan"), float("nan")
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for b0 in range(0, len(items), batch_size):
            batch = items[b0 : b0 + batch_size]
            logits, _, _ = _batch_logits(model, head_mod, batch, head, encode, eot, max_len, device)
            # the argmax of each row (classify) or of each item's candidate scores (choice)
            predicted = [int(scores.argmax()) for scores in logits]
            correct += sum(it.is_correct(p) for p, it in zip(predicted, batch))
            loss_sum += float(_loss(logits, batch, head)) * len(batch)
    return correct / len(items), loss_sum / len(items)


def _train_one(
    base: nn.Module,
    n_out: int,
    train: list[Item],
    head: str,
    lr: float,
    s: FinetuneSettings,
    encode,
    eot: int,
    max_len: int,
    device,
    advance,
) -> tuple[nn.Module, nn.Module, float, int]:
    """Fine-tune a fresh copy of ``base`` at ``lr``; returns (model, head, last loss, tokens)."""
    torch.manual_seed(s.seed)  # dropout masks: the same stream for every learning rate
    model = copy.deepcopy(base).to(device)
    set_capacity(model, eval_factor=s.capacity_factor, train_factor=s.capacity_factor)
    gen = torch.Generator().manual_seed(s.seed)
    head_mod = task_head(model.cfg.d_model, n_out, gen).to(device)
    # The trainer's groups: decay on matrices only (model and head, in that order).
    groups = param_groups(nn.ModuleList([model, head_mod]), s.weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    steps_per_epoch = math.ceil(len(train) / s.batch_size)
    total = steps_per_epoch * s.epochs
    warmup = max(1, int(s.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warmup, max(0.0, (total - i) / max(1, total - warmup)))
    )
    aux_w, z_w = model.cfg.aux_loss_weight, model.cfg.z_loss_weight
    rng = np.random.default_rng(s.seed)
    last_loss, tokens = float("nan"), 0
    model.train()
    head_mod.train()
    for _ in range(s.epochs):
        order = rng.permutation(len(train))
        for b0 in range(0, len(train), s.batch_size):
            batch = [train[i] for i in order[b0 : b0 + s.batch_size]]
            logits, aux, z = _batch_logits(
                model, head_mod, batch, head, encode, eot, max_len, device
            )
            loss = _loss(logits, batch, head)
            objective = loss + aux_w * aux + z_w * z
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            sched.step()
            last_loss = float(loss.detach())
            tokens += sum(
                len(q) for it in batch for q in _sequences(it, head, encode, eot, max_len)
            )
            advance(1)
    return model, head_mod, last_loss, tokens


def finetune_task(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    settings: FinetuneSettings | None = None,
    *,
    limit: int | None = None,
    train_limit: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune copies of ``model`` (left unchanged) on ``task`` over the learning-rate grid
    and report validation accuracy at the rate chosen on held-out training items.
    ``limit`` caps the validation items, ``train_limit`` the training items (cheap runs)."""
    s = (settings or FinetuneSettings()).validate()
    check_at_least_one(limit=limit, train_limit=train_limit)
    if task.finetune not in ("classify", "choice"):
        raise MoelabError(
            f"task {task.name} is not a fine-tuning task (LAMBADA-style tasks have no head; "
            "ReCoRD is evaluated zero-shot only)"
        )
    if not task.train_items:
        raise MoelabError(
            f"task {task.name} has no train split here (sources: {', '.join(task.sources)}); "
            "add its train file next to the evaluated one to fine-tune on it"
        )
    head = task.finetune
    n_out = len(task.class_names) if head == "classify" else 1
    encode, eot = make_encode(tokenizer), eot_token_id(tokenizer, default=0)
    device = device if device is not None else next(model.parameters()).device
    max_len = s.max_len or model.cfg.max_seq_len
    rng = np.random.default_rng(s.seed)
    pool = [task.train_items[i] for i in rng.permutation(len(task.train_items))][:train_limit]
    n_held = max(1, int(round(s.heldout_fraction * len(pool))))
    if len(pool) - n_held < 1:
        raise MoelabError(
            f"task {task.name}: too few training items ({len(pool)}) to hold some out"
        )
    held, train = pool[:n_held], pool[n_held:]
    # the evaluated split first, then any further labelled split (MNLI: dev_mismatched); all
    # are scored by the same tuned model, and ``limit`` caps each of them
    splits = {task.split: task.items, **task.extra_splits}
    splits = {name: items[:limit] for name, items in splits.items()}
    val = splits[task.split]
    t0 = time.perf_counter()
    grid, best, best_rank = [], None, (0.0, 0.0)
    steps = len(s.lrs) * s.epochs * math.ceil(len(train) / s.batch_size)
    with progress_bar(steps, f"finetune {task.name}", progress) as advance:
        for lr in s.lrs:
            tuned, head_mod, last_loss, tokens = _train_one(
                model, n_out, train, head, lr, s, encode, eot, max_len, device, advance
            )
            args = (head, encode, eot, max_len, device, s.batch_size)
            held_acc, held_loss = evaluate_items(tuned, head_mod, held, *args)
            split_acc = {
                name: evaluate_items(tuned, head_mod, its, *args)[0] for name, its in splits.items()
            }
            row = {
                "lr": lr,
                "heldout_accuracy": held_acc,
                "heldout_loss": held_loss,
                "final_train_loss": last_loss,
                "train_tokens": tokens,
                "validation_accuracy": split_acc[task.split],
                "split_accuracy": split_acc,
            }
            grid.append(row)
            # a small held-out part often ties on accuracy; the lower held-out loss breaks it
            if best is None or (held_acc, -held_loss) > best_rank:
                best, best_rank = row, (held_acc, -held_loss)
            del tuned, head_mod
    chance = float(np.mean([1.0 / it.n_candidates for it in val]))
    if head == "classify":  # majority class of the validation split is the stronger baseline
        counts = np.bincount([it.label for it in val], minlength=n_out)
        majority = float(counts.max() / counts.sum())
    else:
        majority = None
    return {
        "kind": "finetune",
        "task": task.name,
        "mode": "finetune",
        "head": head,
        "split": task.split,
        "n_items": len(val),
        "n_items_total": len(task.items),
        "n_train": len(train),
        "n_heldout": len(held),
        "accuracy": best["validation_accuracy"],
        # every labelled split at the chosen rate ({split: {"accuracy", "n_items"}}); the
        # evaluated split is also "accuracy" above
        "splits": {
            name: {"accuracy": best["split_accuracy"][name], "n_items": len(its)}
            for name, its in splits.items()
        },
        "best_lr": best["lr"],
        "chance": chance,
        "majority_class": majority,
        "grid": grid,
        "settings": {
            **asdict(s),
            "lrs": list(s.lrs),
            "max_len": max_len,
            "optimizer": "AdamW(0.9, 0.98), linear decay",
        },
        "compute": {
            "seconds": time.perf_counter() - t0,
            "train_tokens": sum(g["train_tokens"] for g in grid),
        },
        "sources": task.sources,
    }


def finetune_run(
    run_dir: str,
    task: str | Task,
    settings: FinetuneSettings | None = None,
    *,
    tasks_dir: str | None = None,
    step: int | None = None,
    limit: int | None = None,
    train_limit: int | None = None,
    device: str | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune a run's newest checkpoint (or ``step``) on a task (see :func:`finetune_task`).
    The settings come as ``settings`` or as flat keywords (``epochs``, ``batch_size``, ``lrs``,
    ``seed``, ``heldout_fraction``, ``weight_decay``, ``warmup_fraction``, ``max_len``,
    ``capacity_factor``), e.g. from a study config's ``finetune_options`` mapping."""
    if options:
        if settings is not None:
            raise TypeError("finetune_run: give settings or keyword options, not both")
        settings = from_dict(FinetuneSettings, options)
    check_at_least_one(limit=limit, train_limit=train_limit)
    if settings is not None:
        settings.validate()  # before the model loads
    loaded = task if isinstance(task, Task) else get_task(task, tasks_dir)
    run = open_run(run_dir, step=step, device=device)
    result = finetune_task(
        run.model,
        run.tokenizer,
        loaded,
        settings,
        limit=limit,
        train_limit=train_limit,
        progress=progress,
    )
    result["run_dir"] = str(run.run_dir)
    result["checkpoint"] = run.checkpoint
    cap = capacity_report(run.model)
    cap["eval_capacity_factor"] = result["settings"]["capacity_factor"]
    cap["dropless"] = cap.get("moe", False) and result["settings"]["capacity_factor"] is None
    result["capacity"] = cap
    return result
