"""The plan: every run's model, parameters, budget in tokens and FLOPs, tokens per parameter and
estimated wall time, computed before anything trains (``moelab study --plan`` prints it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import yaml

from moelab.config import ModelConfig
from moelab.errors import MoelabError
from moelab.flops import ParamCounts, count_params, train_flops_per_token
from moelab.study.plan.grid import RunSpec, _run_key
from moelab.train.budget import cooldowns_of, resolve_budget
from moelab.train.config import RunConfig, TrainConfig, run_config_from_dict


@dataclass
class PlannedRun:
    spec: RunSpec
    family: str
    preset: str
    run_config: RunConfig
    params: ParamCounts
    flops_per_token: float
    steps: int
    tokens: int
    train_flops: float  # the main trajectory's
    est_seconds: float  # for every FLOP spent, cooldown branches included
    throughput_source: str  # "measured" or "constant"
    spent_flops: float = 0.0  # train_flops plus the cooldown branches' (schedule: wsd)
    # An upcycled run: moelab.upcycle's arguments (dense: the dense run's name in the study)
    upcycle: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> ModelConfig:
        return self.run_config.model


def family_of(model: ModelConfig, suffix: str = "") -> str:
    """dense / moe<E>-top<k>[-every<n>], prefixed with the architecture when it is not the
    paper's."""
    base = "dense"
    if model.is_moe:
        base = f"moe{model.n_experts}-top{model.top_k}"
        # The usual MoE layout of each architecture (paper: every second layer, as in the
        # paper; modern: every layer, as Mixtral) is implied; any other says so, so that both
        # layouts in one grid are two families.
        if model.moe_every != (2 if model.arch == "paper" else 1):
            base += f"-every{model.moe_every}"
        base += _design_label(model)
    if model.arch != "paper":
        base = f"{model.arch}-{base}"
    return base + suffix


def _design_label(model: ModelConfig) -> str:
    """The MoE design beyond the paper's (granularity, shared experts, scores, balancing), so
    that designs with the same expert count and top-k are separate families; empty for the
    paper's design."""
    out = ""
    if model.expert_width != model.d_ffn:
        g = model.d_ffn / model.expert_width
        out += f"-g{g:g}"
    if model.n_shared_experts:
        out += f"-shared{model.n_shared_experts}"
    if model.router_score != "softmax":
        out += f"-{model.router_score}"
    if model.balance != "loss":
        out += f"-{model.balance}"
    if model.balance_scope != "micro_batch":
        out += f"-{model.balance_scope.replace('_', '')}"
    return out


def resolve_run(spec: RunSpec, data_dir: str | None, vocab_size: int) -> RunConfig:
    """The trainer's RunConfig for a run, without opening the data (plan before prepare)."""
    raw = dict(spec.run_config)
    raw["data"] = {**(raw.get("data") or {}), "dir": data_dir or "(prepared by the study)"}
    cfg = run_config_from_dict(raw, check_data=False)
    cfg.model.vocab_size = vocab_size
    cfg.model.validate()
    return cfg


def upcycled_run(spec: RunSpec, dense: PlannedRun) -> tuple[RunConfig, dict[str, Any]]:
    """An upcycled run's config, as moelab.upcycle will write it from ``dense``'s checkpoint
    at ``step``, and upcycle's arguments. Its budget is the rest of the dense run's, in the
    same unit (docs/study.md); its per_model keys are upcycle's overrides."""
    from moelab.train.config import UpcycledFrom
    from moelab.upcycle import upcycled_config

    u, t = spec.upcycle or {}, dense.run_config.train
    step, where = u["step"], f"grid.model upcycle {spec.name}"
    if step >= dense.steps or (step % t.checkpoint_every if t.checkpoint_every else 1):
        raise MoelabError(
            f"{where}: step {step} is not a checkpoint of {dense.name} before its last step "
            f"(it takes {dense.steps} steps and saves every {t.checkpoint_every} "
            "(train.checkpoint_every): give a multiple below its steps)"
        )
    budget = resolve_budget(dense.run_config)
    settings = {_run_key(k): v for k, v in u["settings"].items()}
    rest = {
        "train.budget_steps": t.budget_steps and t.budget_steps - step,
        "train.budget_tokens": t.budget_tokens and t.budget_tokens - budget.tokens_at(step),
        "train.budget_flops": t.budget_flops and t.budget_flops - budget.flops_at(step),
    }
    if set(rest) & set(settings):  # its own budget: the others unset
        rest = {k: None for k in rest}
    # the base/grid's keep_last, not the one the dense run's raised to keep every checkpoint
    own = spec.run_config.get("train") or {}
    rest["train.keep_last"] = own.get("keep_last", TrainConfig.keep_last)
    # as --set strings (YAML flow values: 1.0e+16 stays a float)
    overrides = [
        f"{k}={yaml.safe_dump([v], default_flow_style=True).strip()[1:-1]}"
        for k, v in {**rest, **settings}.items()
    ]
    shape = {"experts": u["experts"], "top_k": u["top_k"]}
    try:
        cfg = upcycled_config(dense.run_config, dense.name, overrides=overrides, **shape)
    except MoelabError as e:
        raise MoelabError(f"{where}: {e}") from None
    cfg.upcycled_from = UpcycledFrom(
        "", dense.run_config.config_hash(), step, budget.tokens_at(step), budget.flops_at(step)
    )
    return cfg, {"dense": dense.name, "step": step, **shape, "overrides": overrides}


def measure_flops_per_second(run_cfg: RunConfig, steps: int = 2) -> float:
    """Time a few real training steps (forward, backward, AdamW) of this model on random tokens
    at the run's micro-batch."""
    import torch

    from moelab.model import build_model
    from moelab.train.optim import build_optimizer

    t = run_cfg.train
    torch.manual_seed(0)
    model = build_model(run_cfg.model)
    model.train()
    opt = build_optimizer(model, t)  # the trainer's (fused AdamW where it can)
    mb = t.batch_size // t.grad_accum  # sequences per forward pass on one process
    tokens_BT = torch.randint(0, run_cfg.model.vocab_size, (mb, t.seq_len + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.dtype == "bf16"):
            # The trainer's path: the model's own chunked loss, no logits.
            out = model(tokens_BT[:, :-1], targets_BT=tokens_BT[:, 1:])
            loss = out.ce_loss + run_cfg.model.aux_loss_weight * out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, first-call overheads
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    per_token = train_flops_per_token(run_cfg.model, t.seq_len)
    return per_token * mb * t.seq_len / max(seconds, 1e-9)


def make_plan(
    specs: list[RunSpec],
    *,
    data_dir: str | None,
    vocab_size: int,
    flops_per_second: float,
    measure: bool,
) -> list[PlannedRun]:
    plan: list[PlannedRun] = []
    measured: dict[str, float] = {}
    sources = {s.upcycle["source"] for s in specs if s.upcycle}
    for spec in specs:
        up = None
        if spec.upcycle:  # after its dense run (grid.expand_grid)
            dense = next(p for p in plan if p.name == spec.upcycle["source"])
            run_cfg, up = upcycled_run(spec, dense)
        else:
            run_cfg = resolve_run(spec, data_dir, vocab_size)
        model = run_cfg.model
        budget = resolve_budget(run_cfg)  # the trainer's own rounding to whole steps
        if spec.name in sources:  # keeps every checkpoint, its upcycled runs' step among them
            run_cfg.train.keep_last = max(run_cfg.train.keep_last, budget.total_steps)
        cooldowns = sum(c.length for c in cooldowns_of(run_cfg, budget))
        spent = budget.total_flops + budget.flops_at(cooldowns)
        speed, source = flops_per_second, "constant"
        if measure:
            t = run_cfg.train
            key = repr((model, t.batch_size // t.grad_accum, t.seq_len, t.dtype))
            if key not in measured:
                measured[key] = measure_flops_per_second(run_cfg)
            speed, source = measured[key], "measured"
        family, preset = family_of(model, spec.family_suffix), spec.run_config.get("model")
        if isinstance(preset, dict):  # a preset with changes, or a model of its own
            preset = preset.get("preset")
        if up:  # the label the report shows: the dense run's compute included
            preset, at = spec.upcycle["label"], run_cfg.upcycled_from.train_flops
            family += f" upcycled from {spec.upcycle['from']} at {at:.3g} FLOPs"
        plan.append(
            PlannedRun(
                spec=spec,
                family=family,
                preset=preset if isinstance(preset, str) else model.name,
                run_config=run_cfg,
                params=count_params(model),
                flops_per_token=budget.flops_per_token,
                steps=budget.total_steps,
                tokens=budget.total_tokens,
                train_flops=budget.total_flops,
                est_seconds=spent / speed,
                throughput_source=source,
                spent_flops=spent,
                upcycle=up,
            )
        )
    return plan


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.2f}h"


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of jobs handed out longest first to ``workers`` processes."""
    loads = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def format_plan(plan: list[PlannedRun], eval_note: str = "", workers: int = 1) -> str:
    """A human table of the plan, one line per run, with totals (the time on ``workers``
    processes assumes each runs at the measured single-process speed: true while there are
    at least as many free cores as workers)."""
    fw = max([18] + [len(p.family) for p in plan])  # design families have long names
    head = (
        f"{'#':>3}  {'run':<34} {'family':<{fw}} {'params':>8} {'active':>8} {'steps':>6} "
        f"{'tokens':>8} {'tok/param':>9} {'FLOPs':>8} {'est. time':>9}"
    )
    lines = [head, "-" * len(head)]
    for i, p in enumerate(plan, 1):
        lines.append(
            f"{i:>3}  {p.name[:34]:<34} {p.family:<{fw}} {_si(p.params.total):>8} "
            f"{_si(p.params.active):>8} {p.steps:>6} {_si(p.tokens):>8} "
            f"{p.tokens / p.params.active:>9.2f} {p.train_flops:>8.2e} "
            f"{fmt_seconds(p.est_seconds):>9}"
        )
    flops = sum(p.train_flops for p in plan)
    spent = sum(p.spent_flops for p in plan)
    total = f"{len(plan)} runs, {flops:.3g} training FLOPs (paper accounting)"
    if spent > flops * 1.0001:
        total += f" + {spent - flops:.3g} in cooldown branches"
    seconds = [p.est_seconds for p in plan]
    sources = "/".join(sorted({p.throughput_source for p in plan}))
    total += f", estimated training time {fmt_seconds(sum(seconds))} ({sources} throughput)"
    if workers > 1:
        total += f", about {fmt_seconds(makespan(seconds, workers))} on {workers} worker processes"
    if eval_note:
        total += f"; {eval_note}"
    return "\n".join([*lines, "-" * len(head), total])
