"""Grid expansion: a base run config and ``grid: {dotted.key: [values]}`` -> one RunSpec per
combination, each with a stable, readable, filesystem-safe name.

A ``grid.model`` entry ``{upcycle: {from: DENSE, step: N, experts: E, top_k: K}}`` is a run
upcycled (moelab.upcycle) from the dense run of grid model DENSE with the same other grid
values, at its checkpoint N; such runs come after every other run (docs/study.md)."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import Any

from moelab.errors import MoelabError
from moelab.study.plan.config import StudyConfig

# Short names for the run-name suffix; any other key uses its last dotted part.
_SHORT = {
    "model.n_experts": "E",
    "model.top_k": "k",
    "model.capacity_factor": "cf",
    "model.eval_capacity_factor": "ecf",
    "model.second_expert_policy": "policy",
    "model.moe_every": "every",
}

# Model keys that change routing, not size: varying one of them makes a separate family.
ROUTING_KEYS = (
    "model.capacity_factor",
    "model.eval_capacity_factor",
    "model.second_expert_policy",
    "model.moe_every",
    "model.aux_loss_weight",
    "model.z_loss_weight",
    "model.arch",
)


@dataclass
class RunSpec:
    """One run of the study: its name, the grid values that made it, and its run config."""

    name: str
    index: int
    values: dict[str, Any]  # grid key -> value for this run
    run_config: dict[str, Any]  # the trainer's run config (model, data, train sections)
    family_suffix: str = ""  # routing/family keys that split the family
    # An upcycled run: {from, step, experts, top_k} of its grid entry, its "label" (model
    # name), "source" (the dense run's name) and "settings" (its per_model keys, given to
    # moelab.upcycle as overrides)
    upcycle: dict[str, Any] | None = None


UPCYCLE_FORM = "{upcycle: {from: DENSE_MODEL, step: N, experts: E, top_k: K, name: NAME}}"


def _upcycle_entry(value: Any) -> dict[str, Any] | None:
    """A ``grid.model`` upcycle entry as ``{name, upcycle: {from, step, experts, top_k}}``
    (None for any other value); a malformed one is refused."""
    if not (isinstance(value, dict) and "upcycle" in value):
        return None
    u = value["upcycle"]
    keys = set(u) if isinstance(u, dict) else set()
    bad = (
        set(value) != {"upcycle"}
        or not isinstance(u, dict)
        or {"from", "step", "experts"} - keys
        or keys - {"from", "step", "experts", "top_k", "name"}
    )
    if bad:
        raise MoelabError(
            f"grid.model: {value!r}: an upcycled run is {UPCYCLE_FORM} (top_k and name optional)"
        )
    u = {"top_k": 2, **u}
    for key in ("step", "experts", "top_k"):
        if not isinstance(u[key], int) or isinstance(u[key], bool) or u[key] < 1:
            raise MoelabError(f"grid.model upcycle {key}: must be an integer >= 1, got {u[key]!r}")
    src = str(u["from"])
    name = u.get("name") or f"upcycled-{src}-{u['experts']}x-top{u['top_k']}-step{u['step']}"
    keep = {k: u[k] for k in ("step", "experts", "top_k")}
    return {"name": str(name), "upcycle": {"from": src, **keep}}


def _value_label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", "custom"))
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    return str(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "run"


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections; a preset name in ``model`` stays a
    name until a sub-key is set, then the trainer receives ``{preset: NAME, KEY: VALUE}``."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if isinstance(nxt, str) and i == 0 and part == "model":
            nxt = {"preset": nxt}
            node[part] = nxt
        elif nxt is None:
            nxt = {}
            node[part] = nxt
        elif not isinstance(nxt, dict):
            raise MoelabError(f"grid.{key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _run_key(key: str) -> str:
    return "train.seed" if key == "seed" else key  # ``seed``: the trainer's seed key


def _key_label(key: str, value: Any) -> str:
    return f"{_SHORT.get(key, key.split('.')[-1])}={_value_label(value)}"


def expand_grid(cfg: StudyConfig) -> list[RunSpec]:
    """Cartesian product over the grid, in the order keys and values are written.

    Names join the value of ``model`` (a preset name) with ``short=value`` for every other
    varied key, so a rerun finds the same folders.
    """
    keys = list(cfg.grid)
    value_lists = [cfg.grid[k] for k in keys]
    if "model" in cfg.grid:
        value_lists[keys.index("model")] = [_upcycle_entry(v) or v for v in cfg.grid["model"]]
    family_keys = (
        cfg.family_keys if cfg.family_keys is not None else [k for k in keys if k in ROUTING_KEYS]
    )
    for k in family_keys:
        if k not in cfg.grid:
            raise MoelabError(f"family_keys: {k!r} is not a grid key; grid keys: {', '.join(keys)}")
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for index, combo in enumerate(itertools.product(*value_lists)):
        values = dict(zip(keys, combo))
        model = values.get("model")
        up = model.get("upcycle") if isinstance(model, dict) else None  # made, not configured
        run_config = copy.deepcopy(cfg.base)
        for key, value in values.items():
            if not (key == "model" and up):
                set_dotted(run_config, _run_key(key), value)
        if "model" not in values:
            model = run_config.get("model")
            model = model if isinstance(model, str) else (model or {}).get("preset", "model")
        model_label = _value_label(model)
        settings = cfg.per_model.get(model_label, {})
        for key, value in {} if up else settings.items():
            set_dotted(run_config, _run_key(key), value)
        labels = [_key_label(k, v) for k, v in values.items() if k != "model"]
        name = _safe("__".join([model_label, *labels]))
        if name in seen:
            raise MoelabError(
                f"grid: two runs would share the folder name {name!r}; give distinct values"
            )
        seen.add(name)
        suffix = "".join(f"-{_key_label(k, values[k])}" for k in family_keys)
        up = {**up, "settings": dict(settings), "label": model_label} if up else None
        specs.append(RunSpec(name, index, values, run_config, suffix, up))
    unused = set(cfg.per_model) - {_value_label(s.values.get("model", "")) for s in specs}
    if unused and "model" in cfg.grid:
        raise MoelabError(f"per_model: {', '.join(sorted(unused))} not in grid.model")
    return _link_upcycled(specs + _replicates(cfg, specs, seen))


def _link_upcycled(specs: list[RunSpec]) -> list[RunSpec]:
    """Each upcycled run's dense run (grid model ``from`` with the same other grid values, a
    replicate seed included), and every upcycled run after every other run."""
    plain = [s for s in specs if s.upcycle is None]
    ups = [s for s in specs if s.upcycle is not None]
    for s in ups:
        want = {**s.values, "model": s.upcycle["from"]}
        found = [
            p.name
            for p in plain
            if {**p.values, "model": _value_label(p.values.get("model"))} == want
        ]
        if not found:
            models = sorted({_value_label(p.values.get("model")) for p in plain})
            raise MoelabError(
                f"grid.model upcycle {s.name}: from {s.upcycle['from']!r} is not a grid model "
                f"run with its other grid values (models: {', '.join(models)}; a replicate seed "
                "needs the dense model in replicates.models too)"
            )
        s.upcycle["source"] = found[0]
    return plain + ups


def _replicates(cfg: StudyConfig, specs: list[RunSpec], seen: set[str]) -> list[RunSpec]:
    """Copies of the grid's runs of ``replicates.models`` with each of ``replicates.seeds``."""
    rep = cfg.replicates
    if not rep:
        return []
    wanted = [str(m) for m in rep["models"]]
    models = {_value_label(s.values.get("model", "")) for s in specs}
    missing = [m for m in wanted if m not in models]
    if missing:
        known = ", ".join(sorted(models))
        raise MoelabError(f"replicates.models: {', '.join(missing)} not in grid.model ({known})")
    out: list[RunSpec] = []
    for seed in rep["seeds"]:
        for spec in specs:
            if _value_label(spec.values.get("model", "")) not in wanted:
                continue
            own = (spec.run_config.get("train") or {}).get("seed", 1)
            if seed == own:
                raise MoelabError(
                    f"replicates.seeds: {seed} is already the seed of {spec.name} (train.seed); "
                    "give replicate seeds other than the base seed"
                )
            run_config = copy.deepcopy(spec.run_config)
            set_dotted(run_config, _run_key("seed"), seed)
            name = _safe(f"{spec.name}__seed={_value_label(seed)}")
            if name in seen:
                raise MoelabError(f"replicates: run {name!r} twice; give distinct seeds")
            seen.add(name)
            values = {**spec.values, "seed": seed}
            up = dict(spec.upcycle) if spec.upcycle else None
            index = len(specs) + len(out)
            out.append(RunSpec(name, index, values, run_config, spec.family_suffix, up))
    return out
