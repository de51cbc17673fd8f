"""The run config: which model, which prepared data, and how to train it. docs/training.md
(*The run config*) is the one account of its sections (``model``, ``data``, ``train``, the
optional ``parallel``; ``upcycled_from`` is written by ``moelab upcycle`` only), checked up
front with errors naming the dotted key. The model's ``vocab_size`` always comes from the
prepared data's tokenizer, so a run can never disagree with its data about token ids.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moelab.config import (
    ModelConfig,
    apply_overrides,
    check_finite,
    from_dict,
    load_yaml,
    to_dict,
)
from moelab.errors import MoelabError
from moelab.parallel.options import ParallelConfig
from moelab.train.schedule import KINDS

SECTIONS = ("model", "data", "train", "parallel", "upcycled_from")

# Keys that may change when a run resumes: they change how a run is watched or stored,
# never the numbers it produces.
OPERATIONAL_KEYS = frozenset(
    {
        "train.log_every",
        "train.tensorboard",
        "train.keep_last",
        "train.checkpoint_every",
        "train.max_nonfinite_in_row",
        "train.device",
        "train.threads",
        "parallel.ep",
        "parallel.timeout_s",
        "parallel.activation_checkpointing",
    }
)


@dataclass
class DataSection:
    """The prepared data folder (``moelab prepare --out DIR``) and optional mixture weights
    per training domain (default: proportional to size)."""

    dir: str = ""
    weights: dict[str, float] | None = None


@dataclass
class TrainConfig:
    """How to train. Exactly one budget is set. ``batch_size`` counts sequences per optimizer
    step over all ranks and micro-batches; each step trains on ``batch_size * seq_len`` tokens."""

    # Budget: exactly one of these. FLOPs use the paper's accounting (moelab.flops).
    budget_flops: float | None = None
    budget_tokens: int | None = None
    budget_steps: int | None = None
    seq_len: int = 256
    batch_size: int = 32
    grad_accum: int = 1
    # Optimizer (AdamW; weight decay on matrices only) and schedule.
    lr: float = 6e-4
    warmup_steps: int | None = None  # or warmup_tokens; neither: 1% of the steps
    warmup_tokens: int | None = None
    schedule: str = "linear"  # "linear" (paper) | "cosine" | "constant" | "wsd"
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of lr
    # wsd: the decay's share of the steps, and how many cooldown branches to fork from the
    # stable phase (annealed validation points at budgets 1/2, 1/4, ... of the run's).
    decay_fraction: float = 0.2
    cooldowns: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip: float | None = None  # max global gradient norm; null: no clipping (paper)
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast; weights and optimizer stay fp32)
    dropout: float | None = None  # overrides model.dropout and model.attn_dropout when set
    seed: int = 1
    # Validation: a fixed subset (the first eval_tokens tokens) of every domain's val split,
    # at eval_points log-spaced steps plus the final one, so curves line up across runs.
    eval_tokens: int = 65536
    eval_points: int = 8
    eval_batch_size: int | None = None  # sequences per eval forward; null: the micro-batch
    # Checkpoints, logging, guard.
    checkpoint_every: int = 500  # steps; the final step is always saved
    keep_last: int = 2
    max_nonfinite_in_row: int = 5
    log_every: int = 10
    tensorboard: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # CPU threads torch uses for the run (per process); null: torch's own choice, one per core
    # (or OMP_NUM_THREADS). 1 by default: on a machine whose other cores are busy, one per core
    # is much slower than one (benchmarks/train_threads.py measures it).
    threads: int | None = 1

    def validate(self) -> TrainConfig:
        def bad(key: str, why: str) -> MoelabError:
            return MoelabError(f"train.{key}: {why}")

        check_finite(self, "train")  # the > 0 checks below then need no isfinite
        budgets = [k for k in ("budget_flops", "budget_tokens", "budget_steps") if getattr(self, k)]
        if len(budgets) != 1:
            got = ", ".join(budgets) if budgets else "none"
            raise MoelabError(
                "train: set exactly one budget (budget_flops, budget_tokens or budget_steps); "
                f"got {got}"
            )
        for key in (budgets[0], "lr"):
            if not getattr(self, key) > 0:
                raise bad(key, f"must be > 0, got {getattr(self, key)}")
        at_least_one = ("seq_len", "batch_size", "grad_accum", "eval_points", "log_every")
        for key in (*at_least_one, "keep_last", "max_nonfinite_in_row"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.grad_accum:
            raise bad(
                "grad_accum",
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}",
            )
        if self.warmup_steps is not None and self.warmup_tokens is not None:
            raise bad("warmup_steps", "set warmup_steps or warmup_tokens, not both")
        for key in ("warmup_steps", "warmup_tokens", "cooldowns", "weight_decay", "seed"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise bad(key, f"must be >= 0, got {v}")
        if self.schedule not in KINDS:
            raise bad("schedule", f"must be linear, cosine, constant or wsd, got {self.schedule!r}")
        if not 0.0 < self.decay_fraction < 1.0:
            raise bad("decay_fraction", f"must be in (0, 1), got {self.decay_fraction}")
        if self.cooldowns and self.eval_tokens == 0:
            raise bad(
                "cooldowns",
                "cooldown branches exist to be validated; set train.eval_tokens > 0 or "
                "train.cooldowns=0",
            )
        if self.cooldowns and self.schedule != "wsd":
            raise bad(
                "cooldowns",
                f"cooldown branches need schedule: wsd (got {self.schedule!r}); "
                "set train.schedule=wsd or train.cooldowns=0",
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise bad("eps", f"must be > 0, got {self.eps}")
        if self.clip is not None and not self.clip > 0:
            raise bad("clip", f"must be > 0 or null (no clipping), got {self.clip}")
        if self.dtype not in ("fp32", "bf16"):
            raise bad("dtype", f"must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1) or null, got {self.dropout}")
        if self.eval_tokens < 0:
            raise bad("eval_tokens", f"must be >= 0 (0: no validation), got {self.eval_tokens}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise bad("eval_batch_size", f"must be >= 1 or null, got {self.eval_batch_size}")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", "must be >= 0 (0: only the final step)")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", f"must be >= 1 or null (torch's default), got {self.threads}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self


# Identified by the data's fingerprint, not by its path: a moved data, run or study folder must
# resume. The trainer compares the checkpoint's data_fingerprint (and tokenizer) with the data.
LOCATION_KEYS = frozenset({"data.dir", "upcycled_from.run"})


@dataclass
class UpcycledFrom:
    """The dense run an upcycled MoE run started from (``moelab upcycle``, docs/upcycle.md),
    so that a study can count the dense run's compute."""

    run: str = ""  # the dense run folder (where it was: not hashed, like data.dir)
    config_hash: str = ""  # the dense run's config hash
    step: int = 0  # the dense checkpoint copied
    tokens: int = 0  # tokens the dense run had trained on at that step
    train_flops: float = 0.0  # its training FLOPs to that step (the paper's accounting)


@dataclass
class RunConfig:
    """Everything a run needs. ``model`` is fully resolved (preset applied, vocab from data)."""

    model: ModelConfig
    data: DataSection
    train: TrainConfig
    notes: list[str] = field(default_factory=list)  # how values were resolved; not compared
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    upcycled_from: UpcycledFrom | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": to_dict(self.model),
            "data": to_dict(self.data),
            "train": to_dict(self.train),
            "parallel": to_dict(self.parallel),
        }
        if self.upcycled_from is not None:  # absent otherwise: every other run keeps its hash
            out["upcycled_from"] = to_dict(self.upcycled_from)
        return out

    def to_yaml(self) -> str:
        header = "# Resolved moelab run config (moelab train writes this; it reloads as is).\n"
        header += "".join(f"# {note}\n" for note in self.notes)
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """Hash of every key that changes what the run computes (not OPERATIONAL_KEYS, not
        where the data lives: LOCATION_KEYS; parallel keys only where not default, see
        ParallelConfig.hashed)."""
        flat = self._hashed_flat()
        return _hash({k: v for k, v in flat.items() if k not in LOCATION_KEYS})

    def legacy_config_hash(self, data_dir: str) -> str:
        """The hash checkpoints written before data.dir left it hold (data.dir included),
        for the data folder ``data_dir`` they were trained on: such runs stay resumable."""
        return _hash({**self._hashed_flat(), "data.dir": data_dir})

    def _hashed_flat(self) -> dict[str, Any]:
        flat = flatten({k: v for k, v in self.to_dict().items() if k != "parallel"})
        flat = {k: v for k, v in flat.items() if k not in OPERATIONAL_KEYS}
        return {**flat, **self.parallel.hashed()}


def _hash(flat: dict[str, Any]) -> str:
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """Keys (dotted) whose values differ and matter for the results, as 'key: old -> new'.
    Where the data lives (LOCATION_KEYS) does not count: its fingerprint says if it is the same."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in OPERATIONAL_KEYS | LOCATION_KEYS and a.get(key) != b.get(key)
    ]


def _resolve_model(spec: Any) -> tuple[ModelConfig, dict[str, Any], str | None]:
    """Model section -> (config, keys the user set explicitly, preset name)."""
    from moelab.presets import get_preset

    def preset(name: Any, key: str) -> ModelConfig:
        if not isinstance(name, str):
            raise MoelabError(f"{key}: expected a preset name, got {name!r}")
        try:
            return get_preset(name)
        except MoelabError as e:
            raise MoelabError(f"{key}: {e}") from None

    if spec is None:
        raise MoelabError("model: missing; give a preset name or a mapping of model fields")
    if isinstance(spec, str):
        return preset(spec, "model"), {}, spec
    if not isinstance(spec, dict):
        raise MoelabError(f"model: expected a preset name or a mapping, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("preset", None)
    base = to_dict(preset(name, "model.preset")) if name is not None else {}
    if "arch" in spec and "init" not in spec:
        base.pop("init", None)  # the preset's init belongs to its arch: resolve the new arch's
    from_dict(ModelConfig, spec, "model")  # type-check the user's keys on their own first
    cfg = from_dict(ModelConfig, {**base, **spec}, "model")
    return cfg, spec, name


def _resolve_data(spec: Any) -> DataSection:
    if isinstance(spec, str | Path):
        spec = {"dir": str(spec)}
    if not isinstance(spec, dict):
        raise MoelabError("data: missing; give the prepared data folder (moelab prepare --out)")
    section = from_dict(DataSection, spec, "data")
    if not section.dir:
        raise MoelabError("data.dir: missing; give the prepared data folder")
    if section.weights is not None:
        for dom, w in section.weights.items():
            if not w >= 0:  # finite: from_dict refuses nan and inf
                raise MoelabError(f"data.weights.{dom}: must be >= 0, got {w}")
        if section.weights and not any(w > 0 for w in section.weights.values()):
            raise MoelabError("data.weights: all zero; give at least one domain a weight > 0")
    return section


def run_config_from_dict(raw: dict[str, Any], *, check_data: bool = True) -> RunConfig:
    """Build and validate a RunConfig from plain data (see the module docstring).

    With ``check_data`` the data folder is opened, its domains checked against ``data.weights``
    and ``model.vocab_size`` set from its tokenizer. Without it (reloading a run's resolved
    config, e.g. on a machine without the data) the model section is taken as written.
    """
    if not isinstance(raw, dict):
        raise MoelabError("run config: the top level must be a mapping with model, data, train")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise MoelabError(
            f"unknown config section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}"
        )
    model, explicit, preset_name = _resolve_model(raw.get("model"))
    data = _resolve_data(raw.get("data"))
    train_raw = raw.get("train")
    if train_raw is None:
        raise MoelabError("train: missing; at least a budget (train.budget_tokens, ...) is needed")
    train = from_dict(TrainConfig, train_raw, "train").validate()
    parallel_raw = raw.get("parallel")  # optional (`parallel:` with nothing under it too)
    parallel = from_dict(ParallelConfig, {} if parallel_raw is None else parallel_raw, "parallel")
    parallel.validate()
    upcycled = raw.get("upcycled_from")
    if upcycled is not None:
        upcycled = from_dict(UpcycledFrom, upcycled, "upcycled_from")
    notes: list[str] = []
    if preset_name:
        notes.append(f"model: preset {preset_name}" + (" with overrides" if explicit else ""))
    if train.dropout is not None:
        model.dropout = model.attn_dropout = train.dropout
    if check_data:
        data.dir = str(Path(data.dir).expanduser().resolve())
        prepared = open_prepared(data.dir)
        vocab = int(prepared.vocab_size)
        if "vocab_size" in explicit and explicit["vocab_size"] != vocab:
            raise MoelabError(
                f"model.vocab_size: {explicit['vocab_size']} differs from the data's tokenizer "
                f"({vocab}); remove the key, it is taken from the data"
            )
        model.vocab_size = vocab
        notes.append(f"model.vocab_size: {vocab}, from the data's tokenizer ({data.dir})")
        if data.weights is not None:
            train_domains = list(prepared.train_domains)
            for dom in data.weights:
                if dom not in train_domains:
                    raise MoelabError(
                        f"data.weights.{dom}: not a training domain of {data.dir}; "
                        f"training domains: {', '.join(train_domains)}"
                    )
    model.validate()
    if train.seq_len > model.max_seq_len:
        raise MoelabError(
            f"train.seq_len: {train.seq_len} exceeds model.max_seq_len {model.max_seq_len}"
        )
    return RunConfig(
        model=model, data=data, train=train, notes=notes, parallel=parallel, upcycled_from=upcycled
    )


def load_run_config(
    path_or_dict: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    check_data: bool = True,
) -> RunConfig:
    """Load a run config from a YAML file or a dict, apply ``key.sub=value`` overrides,
    validate it and resolve the model (preset, vocab size from the data)."""
    raw = copy.deepcopy(path_or_dict) if isinstance(path_or_dict, dict) else load_yaml(path_or_dict)
    if overrides:
        # An override like model.n_layers=4 on `model: NAME` means "that preset, with this".
        if isinstance(raw.get("model"), str) and any(o.startswith("model.") for o in overrides):
            raw["model"] = {"preset": raw["model"]}
        if isinstance(raw.get("data"), str) and any(o.startswith("data.") for o in overrides):
            raw["data"] = {"dir": raw["data"]}
        raw = apply_overrides(raw, list(overrides))
    return run_config_from_dict(raw, check_data=check_data)


def open_prepared(path: str | Path):
    """Open a prepared data folder, with a clear error if it is missing."""
    from moelab.data import PreparedData

    p = Path(path)
    if not p.is_dir():
        raise MoelabError(
            f"data.dir: {p} is not a folder; run `moelab prepare --out {p}` first, or, if the "
            "data folder moved, resume with --set data.dir=ITS_NEW_PLACE"
        )
    return PreparedData.open(p)


def with_parallel_env(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the environment's parallel overrides (MOELAB_EP, MOELAB_EXPERT_GRAD,
    MOELAB_FSDP_BF16, MOELAB_DIST_TIMEOUT_S) applied, noted in its notes so that the stored
    config.yaml says where the values came from."""
    parallel, notes = cfg.parallel.with_env()
    if not notes:
        return cfg
    return dataclasses.replace(cfg, parallel=parallel, notes=[*cfg.notes, *notes])
