"""``moelab upcycle DENSE_RUN --experts E --out NEW_RUN``: sparse upcycling (Komatsuzaki et al.
2022, "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints"). Every expert a
copy of its layer's dense FFN, the router new, the optimizer reset; the step-0 logits are
checked equal to the dense run's (1e-4) before the folder is written, and the config records
``upcycled_from``. docs/upcycle.md is the one account of what is copied, drawn and recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from moelab.config import ModelConfig, apply_overrides, from_dict
from moelab.errors import MoelabError
from moelab.lock import locked_new_dir
from moelab.model import build_model
from moelab.paths import check_can_create
from moelab.train import checkpoint as ckpt_io
from moelab.train.config import RunConfig, UpcycledFrom, run_config_from_dict
from moelab.train.loading import load_model
from moelab.train.optim import build_optimizer
from moelab.train.rng import rng_state, seed_everything
from moelab.train.rundir import CONFIG, TOKENIZER, read_run_config, stored_config

PARITY_TOLERANCE = 1e-4  # max |dense - upcycled| fp32 logits at step 0

# Model keys an upcycled run may set (with --set model.KEY=...): how it routes, balances and
# regularises. Every other model key is the dense run's: the copied weights fix them.
MOE_KEYS = frozenset(
    {"name", "n_experts", "top_k", "moe_every"}  # the layout
    | {"capacity_factor", "eval_capacity_factor", "second_expert_policy"}  # capacity
    | {"router_score", "norm_topk", "route_scale"}  # scores and weights
    | {"balance", "balance_scope", "bias_update_rate", "aux_loss_weight", "z_loss_weight"}
    | {"dropout", "attn_dropout", "activation_dropout"}
)


@dataclass
class UpcycleResult:
    out: Path
    dense_step: int
    dense_flops: float
    moe_layers: list[int]
    max_abs_logit_diff: float


def _check_out(out: Path) -> None:
    check_can_create(out)
    if out.exists() or out.is_symlink():
        raise MoelabError(f"{{key}} {out}: exists; upcycling writes a new run folder", key="out")


def _moe_config(dense: ModelConfig, raw_model: dict) -> ModelConfig:
    """The MoE model config, refusing a key the copied weights cannot follow."""
    moe = from_dict(ModelConfig, raw_model, "model")
    for f in dataclasses.fields(ModelConfig):
        if f.name in MOE_KEYS:
            continue
        old, new = getattr(dense, f.name), getattr(moe, f.name)
        if old != new:
            raise MoelabError(
                f"model.{f.name}: an upcycled run keeps the dense run's {old!r} (got {new!r}); "
                "each expert is a copy of the dense FFN, so only routing keys may change"
            )
    if moe.n_experts < 2:
        raise MoelabError(f"{{key}} must be >= 2, got {moe.n_experts}", key="experts")
    if not 1 <= moe.top_k <= moe.n_experts:
        raise MoelabError(
            f"{{key}} must be between 1 and the {moe.n_experts} experts, got {moe.top_k}",
            key="top_k",
        )
    moe.validate()
    # Top-1 with the router probability as weight (moelab's Switch default) scales the copied
    # FFN by ~1/E: not the dense model any more.
    if moe.top_k == 1 and moe.norm_topk is not True:
        raise MoelabError(
            "{key} 1: the chosen expert's weight is its router probability (about 1/E at the "
            "start), so the upcycled model would not compute the dense one; use 2 or more "
            "(weights renormalised to 1), or set model.norm_topk=true",
            key="top_k",
        )
    return moe


def upcycled_state(
    dense_state: dict[str, torch.Tensor], moe_model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """``moe_model``'s state with every dense weight copied in: the same names for everything
    but the FFNs of the MoE layers, whose E experts each get the dense FFN (moelab stacks
    experts as (E, in, out); nn.Linear holds (out, in)). The router and any buffer the dense
    model lacks keep ``moe_model``'s values."""
    cfg = moe_model.cfg
    state = {k: v.detach().clone() for k, v in moe_model.state_dict().items()}
    moe_layers = set(cfg.moe_layer_ids())
    names = (
        {"w1": "fc1.weight", "b1": "fc1.bias", "w2": "fc2.weight", "b2": "fc2.bias"}
        if cfg.arch == "paper"
        else {"w1": "w1.weight", "w3": "w3.weight", "w2": "w2.weight"}
    )
    used = set()
    for i in moe_layers:
        for ours, theirs in names.items():
            src = dense_state[f"layers.{i}.ffn.{theirs}"]
            used.add(f"layers.{i}.ffn.{theirs}")
            one = src.t() if src.dim() == 2 else src  # (out, in) -> (in, out); biases as is
            dst = f"layers.{i}.ffn.experts.{ours}"
            state[dst] = one.unsqueeze(0).expand_as(state[dst]).clone()
    for name, t in dense_state.items():
        if name in used:
            continue
        if name not in state or state[name].shape != t.shape:
            raise MoelabError(f"dense weight {name} has no place in the MoE model")
        state[name] = t.detach().clone()
    return state


@torch.no_grad()
def _max_logit_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    cfg = a.cfg
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, min(32, cfg.max_seq_len)), generator=gen)
    return float((a.eval()(tokens).logits_BTV - b.eval()(tokens).logits_BTV).abs().max())


def upcycled_config(
    dense_cfg: RunConfig,
    dense_name: str,
    *,
    experts: int,
    top_k: int = 2,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The new run's RunConfig from the dense run's (``upcycled_from`` not set yet): the
    dense run's sections with ``experts`` x top-``top_k`` MoE layers, seed + 1, ``overrides``
    (``KEY=VALUE``: routing keys of the model, any ``train.*``/``parallel.*`` key) applied.
    ``moelab upcycle`` and a study's upcycled runs (study/plan/estimate.py) both make theirs
    here. ``dense_name`` names the dense run in a refusal."""
    if dense_cfg.model.is_moe:
        raise MoelabError(
            f"{dense_name}: already an MoE ({dense_cfg.model.n_experts} experts); upcycling "
            "starts from a dense run"
        )
    raw = dense_cfg.to_dict()
    d = dense_cfg.model
    raw["model"].update(
        name=f"{d.name}-upcycled-{experts}x-top{top_k}", n_experts=experts, top_k=top_k
    )
    raw["train"]["seed"] = dense_cfg.train.seed + 1
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in ("model.n_experts", "model.top_k"):  # they name the run and its note
            flag = "experts" if key == "model.n_experts" else "top_k"
            raise MoelabError(f"{item}: give it with {{key}} instead", key=flag)
        if key.split(".")[0] not in ("model", "train", "parallel"):
            raise MoelabError(
                f"{{key}} {item}: only model.*, train.* and parallel.* keys may be set (the new "
                "run trains on the dense run's data)",
                key="overrides",
            )
    raw = apply_overrides(raw, list(overrides or []))
    raw["model"] = dataclasses.asdict(_moe_config(d, raw["model"]))
    return run_config_from_dict(raw, check_data=False)


def upcycle(
    dense_run: str | Path,
    out: str | Path,
    *,
    experts: int,
    top_k: int = 2,
    step: int | None = None,
    overrides: list[str] | None = None,
) -> UpcycleResult:
    """Write the new run ``out`` from the dense run's newest valid checkpoint (or ``step``)."""
    dense_run, out = Path(dense_run), Path(out)
    _check_out(out)
    dense_cfg = read_run_config(dense_run)
    run_cfg = upcycled_config(
        dense_cfg, str(dense_run), experts=experts, top_k=top_k, overrides=overrides
    )
    moe_cfg = run_cfg.model
    tokenizer = dense_run / TOKENIZER
    if not tokenizer.is_file():
        raise MoelabError(f"{dense_run}: no {TOKENIZER}; not a complete run folder")

    dense_model, _, meta = load_model(dense_run, step=step)
    dense_step = int(meta.get("step", 0))
    flops = float(meta.get("flops") or 0.0)
    run_cfg.upcycled_from = UpcycledFrom(
        run=str(dense_run.resolve()),
        config_hash=meta.get("config_hash") or dense_cfg.config_hash(),
        step=dense_step,
        tokens=int(meta.get("tokens") or 0),
        train_flops=flops,
    )
    run_cfg.notes = [
        f"upcycled by moelab upcycle from {dense_run.resolve()} (step {dense_step}): "
        f"{experts} copies of its FFN, top-{top_k}, in layers {moe_cfg.moe_layer_ids()}"
    ]

    model = build_model(moe_cfg, seed=run_cfg.train.seed)  # the router's init
    model.load_state_dict(upcycled_state(dense_model.state_dict(), model), strict=True)
    diff = _max_logit_diff(dense_model, model)
    if not diff <= PARITY_TOLERANCE:  # also NaN
        raise MoelabError(
            f"the upcycled model's logits differ from the dense run's by {diff:.3g} at step 0 "
            f"(> {PARITY_TOLERANCE}): its routing does not give the copied experts weights "
            "summing to 1 (route scale, capacity in eval mode?); nothing was written"
        )

    model.train()
    seed_everything(run_cfg.train.seed)  # what a new run's RNG is when it takes its first step
    state = {
        "step": 0,
        "tokens": 0,
        "optimizer": build_optimizer(model, run_cfg.train).state_dict(),
        "rng": rng_state(),
        "data": {"seed": run_cfg.train.seed, "next_step": 1},
        "nonfinite_total": 0,
    }
    new_meta = {
        "step": 0,
        "tokens": 0,
        "flops": 0.0,
        "config_hash": run_cfg.config_hash(),
        "data_fingerprint": meta.get("data_fingerprint"),
        "model": moe_cfg.name,
        "train_loss": None,
        "val_loss": None,
    }
    with locked_new_dir(out, "upcycle", _check_out) as tmp:
        (tmp / CONFIG).write_text(stored_config(run_cfg, out).to_yaml(), encoding="utf-8")
        (tmp / TOKENIZER).write_bytes(tokenizer.read_bytes())
        ckpt_io.save_checkpoint(tmp, 0, model, state, new_meta, keep_last=1)
    return UpcycleResult(out, dense_step, flops, moe_cfg.moe_layer_ids(), diff)
