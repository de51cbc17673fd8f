"""Configuration dataclasses, YAML loading and dotted overrides, with validation up front.

Every section (model, data, train, eval, study) is a dataclass. ``from_dict`` builds one from plain
data, rejecting unknown keys and wrong types with a message that names the dotted key, so a typo in
a 200-line YAML file is one clear line, not a late crash.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from moelab.errors import MoelabError

T = TypeVar("T")

INIT_SCHEMES = ("fairseq", "scaled_normal")
ROUTER_SCORES = ("softmax", "sigmoid")
BALANCES = ("loss", "bias", "none")
BALANCE_SCOPES = ("micro_batch", "sequence", "global_batch")
# Field metadata: a key added after runs existed. to_dict leaves it out while it holds its
# default, so the saved config.yaml and the config hash of every earlier run stay the same.
OMIT_IF_DEFAULT = "omit_if_default"


def _later(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={OMIT_IF_DEFAULT: True})


def default_init(arch: str) -> str:
    """The initialisation an architecture gets when a config does not name one: fairseq's for
    the paper arch (what the paper's models were trained from), the GPT-2 style scaled normal
    for the modern arch (measured to train it well; docs/model.md)."""
    return "fairseq" if arch == "paper" else "scaled_normal"


@dataclass
class ModelConfig:
    """A decoder-only LM. ``n_experts == 0`` is dense; otherwise every ``moe_every``-th layer
    (1-based layers moe_every, 2*moe_every, ...) has an MoE FFN of ``n_experts`` experts of size
    ``d_ffn`` each."""

    name: str = "custom"
    arch: str = "paper"  # "paper": XGLM-style (LayerNorm, GELU, sinusoidal, biases); "modern"
    vocab_size: int = 50257
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_ffn: int = 3072
    max_seq_len: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.0
    padding_idx: int = 1  # fairseq's padding index; sinusoidal positions start at padding_idx + 1
    norm_eps: float = 1e-5
    # "fairseq" | "scaled_normal" (see docs/model.md); None (or omitted) = the arch's default,
    # resolved on construction so the saved and hashed config always names the scheme.
    init: str | None = None
    init_std: float = 0.02  # scaled_normal only
    rope_theta: float = 10000.0  # modern arch only
    # MoE
    n_experts: int = 0
    moe_every: int = 2
    top_k: int = 2
    capacity_factor: float | None = 1.0  # None: dropless in training
    eval_capacity_factor: float | None = None  # None: dropless at evaluation (the default)
    second_expert_policy: str = "all"  # "all" | "sampling" | "random" (top_k == 2 only)
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    # Today's MoE designs (docs/model.md "Beyond the paper"); the defaults are the paper's.
    d_expert: int | None = _later(None)  # routed and shared expert width; None: d_ffn
    n_shared_experts: int = _later(0)  # always-on experts of width d_expert each
    shared_expert_gate: bool = _later(False)  # Qwen2-MoE: sigmoid(Linear(D, 1)) * shared output
    router_score: str = _later("softmax")  # "softmax" (paper) | "sigmoid" (DeepSeek-V3)
    norm_topk: bool | None = _later(None)  # None: renormalise the top-k weights iff top_k >= 2
    route_scale: float = _later(1.0)  # routed output multiplier (DeepSeek-V3's routed_scaling)
    balance: str = _later("loss")  # "loss" (paper's, aux_loss_weight) | "bias" | "none"
    balance_scope: str = _later("micro_batch")  # "micro_batch" | "sequence" | "global_batch"
    bias_update_rate: float = _later(0.001)  # balance "bias": step of the selection bias

    def __post_init__(self) -> None:
        if self.init is None:
            self.init = default_init(self.arch)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def moe_layer_ids(self) -> list[int]:
        """0-based indices of the layers whose FFN is an MoE (paper: 1-based layers 2, 4, ...)."""
        if not self.is_moe:
            return []
        return [i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0]

    @property
    def expert_width(self) -> int:
        """Hidden width of one routed (and one shared) expert: ``d_expert``, else ``d_ffn``."""
        return self.d_ffn if self.d_expert is None else self.d_expert

    @property
    def normalizes_topk(self) -> bool:
        """Whether the kept top-k weights of a token are renormalised to sum to 1."""
        return self.top_k >= 2 if self.norm_topk is None else self.norm_topk

    def validate(self) -> ModelConfig:
        def bad(key: str, why: str) -> MoelabError:
            return MoelabError(f"model.{key}: {why}")

        check_finite(self, "model")  # the > 0 checks below then need no isfinite
        if self.arch not in ("paper", "modern"):
            raise bad("arch", f"must be 'paper' or 'modern', got {self.arch!r}")
        if self.init not in INIT_SCHEMES:
            raise bad("init", f"must be one of {', '.join(INIT_SCHEMES)}, got {self.init!r}")
        if self.init == "scaled_normal" and not self.init_std > 0:
            raise bad("init_std", f"must be > 0, got {self.init_std}")
        for key in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ffn", "max_seq_len"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise bad("n_heads", f"d_model {self.d_model} is not divisible by {self.n_heads} heads")
        if self.arch == "paper" and self.d_model % 2:
            raise bad("d_model", "must be even for sinusoidal positions")
        if self.arch == "modern" and (self.d_model // self.n_heads) % 2:
            raise bad("n_heads", "head dim must be even for rotary positions")
        for key in ("dropout", "attn_dropout", "activation_dropout"):
            v = getattr(self, key)
            if not 0.0 <= v < 1.0:
                raise bad(key, f"must be in [0, 1), got {v}")
        if self.n_experts < 0:
            raise bad("n_experts", f"must be >= 0 (0 = dense), got {self.n_experts}")
        if self.is_moe:
            if self.moe_every < 1 or self.moe_every > self.n_layers:
                raise bad("moe_every", f"must be in [1, n_layers={self.n_layers}]")
            if not 1 <= self.top_k <= self.n_experts:
                raise bad(
                    "top_k", f"must be between 1 and n_experts={self.n_experts}, got {self.top_k}"
                )
            for key in ("capacity_factor", "eval_capacity_factor"):
                v = getattr(self, key)
                if v is not None and not v > 0:
                    raise bad(key, f"must be > 0 or null (dropless), got {v}")
            if self.second_expert_policy not in ("all", "sampling", "random"):
                raise bad("second_expert_policy", "must be 'all', 'sampling' or 'random'")
        self._validate_designs(bad)
        for key in ("aux_loss_weight", "z_loss_weight"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("norm_eps", "rope_theta"):
            if not getattr(self, key) > 0:
                raise bad(key, f"must be > 0, got {getattr(self, key)}")
        return self

    def _validate_designs(self, bad: Any) -> None:
        """The beyond-the-paper keys: each refused in one line where it makes no sense."""
        default = ModelConfig()
        if not self.is_moe:
            for key in ("d_expert", "n_shared_experts", "shared_expert_gate", "router_score",
                        "norm_topk", "route_scale", "balance", "balance_scope",
                        "bias_update_rate"):  # fmt: skip
                if getattr(self, key) != getattr(default, key):
                    raise bad(key, "applies to MoE models only (n_experts > 0)")
            return
        if self.d_expert is not None and self.d_expert < 1:
            raise bad("d_expert", f"must be >= 1 or null (d_ffn), got {self.d_expert}")
        if self.n_shared_experts < 0:
            raise bad("n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
        if self.shared_expert_gate and self.n_shared_experts == 0:
            raise bad("shared_expert_gate", "gates the shared experts: set n_shared_experts >= 1")
        if self.router_score not in ROUTER_SCORES:
            raise bad("router_score", f"must be 'softmax' or 'sigmoid', got {self.router_score!r}")
        if not self.route_scale > 0:
            raise bad("route_scale", f"must be > 0, got {self.route_scale}")
        if self.balance not in BALANCES:
            raise bad("balance", f"must be 'loss', 'bias' or 'none', got {self.balance!r}")
        if self.balance_scope not in BALANCE_SCOPES:
            raise bad(
                "balance_scope",
                f"must be 'micro_batch', 'sequence' or 'global_batch', got {self.balance_scope!r}",
            )
        if self.balance != "loss" and self.balance_scope != "micro_batch":
            raise bad(
                "balance_scope", f"is the balancing loss's scope; balance is {self.balance!r}"
            )
        if self.balance != "loss" and self.aux_loss_weight not in (0.0, default.aux_loss_weight):
            raise bad(
                "aux_loss_weight",
                f"weighs the balancing loss, which balance {self.balance!r} does not train "
                "with; set it to 0",
            )
        if self.balance_scope == "global_batch" and self.aux_loss_weight == 0:
            raise bad(
                "balance_scope",
                "global_batch counts each step's routing for the balancing loss, and "
                "aux_loss_weight is 0; use micro_batch",
            )
        if not self.bias_update_rate > 0:
            raise bad("bias_update_rate", f"must be > 0, got {self.bias_update_rate}")
        if self.balance != "bias" and self.bias_update_rate != default.bias_update_rate:
            raise bad("bias_update_rate", f"is for balance 'bias' (balance is {self.balance!r})")
        router_has_loss = self.balance == "loss" and self.aux_loss_weight > 0
        if self.normalizes_topk and self.top_k == 1 and not router_has_loss:
            raise bad(
                "norm_topk",
                "with top_k 1 every normalised weight is 1, and without a balancing loss the "
                "router gets no gradient; set norm_topk false",
            )
        policy = self.second_expert_policy
        if policy != "all" and self.router_score == "sigmoid":
            raise bad(
                "second_expert_policy",
                f"{policy!r} draws from softmax probabilities; router_score 'sigmoid' needs 'all'",
            )
        if policy != "all" and self.balance == "bias":
            raise bad(
                "second_expert_policy",
                f"{policy!r} ignores the balancing bias in its second choice; balance 'bias' "
                "needs 'all'",
            )


# ---------------------------------------------------------------------------------------------
# Generic loading: dict -> dataclass with type checks, YAML files, dotted overrides


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except MoelabError as e:
                errors.append(str(e))
        raise MoelabError(errors[0] if errors else f"{key}: got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise MoelabError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise MoelabError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        items = [_check_type(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise MoelabError(f"{key}: expected a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _check_type(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise MoelabError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise MoelabError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads 3e-4 (no dot) as a string; accept any finite float spelling.
            try:
                value = float(value)
            except ValueError:
                raise MoelabError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MoelabError(f"{key}: expected a number, got {value!r}")
        # NaN passes every "< 0" check and trains to NaN losses; inf (also what 1e400 and
        # integers beyond float range become) makes budgets and schedules meaningless.
        number = float(value) if abs(value) < 2**1024 else math.inf
        if not math.isfinite(number):
            raise MoelabError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise MoelabError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def check_finite(obj: Any, section: str) -> None:
    """Every float field of dataclass ``obj`` (and every float in a list field) is finite:
    the same rule as loading, for configs built in Python rather than from a file."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise MoelabError(f"{section}.{f.name}: expected a finite number, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise MoelabError
    naming the dotted key (e.g. ``train.lr: expected a number, got 'fast'``)."""
    if not isinstance(data, dict):
        raise MoelabError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        valid = ", ".join(sorted(names))
        bad = str(unknown[0])
        bad = bad if bad.isprintable() else repr(bad)  # keep the error on one line
        raise MoelabError(f"unknown config key {where}{bad}; valid keys: {valid}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_type(value, hints[name], key)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain data of dataclass ``obj``, leaving out fields marked OMIT_IF_DEFAULT while they
    hold their default (keys added later: earlier runs' config.yaml and hash stay the same)."""
    out = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if f.metadata.get(OMIT_IF_DEFAULT) and out[f.name] == f.default:
            del out[f.name]
    return out


# PyYAML raises more than YAMLError on hostile scalars: ValueError for 2001-13-01 as a date,
# AttributeError for a bad !!timestamp, RecursionError for deep nesting.
_YAML_FAILURES = (yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MoelabError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except _YAML_FAILURES + (UnicodeDecodeError,) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoelabError(f"{p}: not valid YAML ({first})") from None
    except OSError as e:
        raise MoelabError(f"cannot read config {p}: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MoelabError(f"{p}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a nested dict copy."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise MoelabError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise MoelabError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except _YAML_FAILURES:
            value = raw  # from_dict then names the key and the expected type
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise MoelabError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out
