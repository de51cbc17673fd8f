"""The study configuration: what data, which base run, which grid, which evaluations.

A study YAML has these sections (all optional; the built-in default fills every gap)::

    name: my-study
    data:   {root: ../shared/data, sources: {...}, heldout: {...}, vocab_size: 4096}
    base:   {model: ..., train: {...}}        # one trainer run config, the grid varies it
    grid:   {model: [a, b], train.lr: [...], seed: [1, 2]}
    eval:   {zero_shot: [...], few_shot: [...], shots: 4, seeds: 3, limit: 200, finetune: [...]}
    fit:    {frontier: envelope, bootstrap: 200}

``grid`` is a cartesian product over dotted keys of the run config; every combination is one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.config import apply_overrides, check_finite, from_dict, load_yaml, to_dict
from moelab.errors import MoelabError


@dataclass
class StudyData:
    """Where the study's text comes from. No sources: the built-in corpus (Python stdlib)."""

    prepared: str | None = None  # an already prepared folder; skips preparation
    root: str = "../shared/data"  # relative source paths resolve against this folder
    sources: dict[str, str] = field(default_factory=dict)  # training domain -> path or glob
    heldout: dict[str, str] = field(default_factory=dict)  # out-of-domain -> path or glob
    builtin: bool | None = None  # add the built-in corpus; default: only when no sources
    vocab_size: int = 2048
    options: dict[str, Any] = field(default_factory=dict)  # passed on to moelab.data.prepare

    def resolve(self, location: str) -> str:
        """A source location (``PATH_OR_GLOB[:options]``) as prepare() should see it: the path
        absolute or under the data root, options kept; ``hf:`` sources unchanged."""
        if location.startswith("hf:"):
            return location
        path, sep, options = location.partition(":")
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = Path(self.root).expanduser().resolve() / p
        return str(p) + sep + options


@dataclass
class StudyEval:
    """Evaluations run on each finished run. Validation loss per domain always comes from the
    trainer's log-spaced validation (metrics.jsonl); these add the paper's other settings."""

    ppl: bool = True  # final perplexity on every domain through moelab.eval
    ppl_max_tokens: int | None = None  # cap tokens per domain for the final perplexity
    tasks_dir: str | None = None  # where task folders live; default: data.root
    zero_shot: list[str] = field(default_factory=list)
    few_shot: list[str] = field(default_factory=list)
    shots: int = 4
    seeds: int = 3  # few-shot seeds (the paper used 25)
    limit: int | None = 200  # items per task (the paper used every item)
    limits: dict[str, int] = field(default_factory=dict)  # per task (blimp: per paradigm)
    # Tasks skipped with a note (instead of an error) when their files are not there: lets the
    # built-in study score BLiMP where ../shared/data has it and still run on a bare machine.
    optional: list[str] = field(default_factory=list)
    fewshot_sampling: str = "per_item"  # "per_item" | "per_run" (one example set per seed)
    finetune: list[str] = field(default_factory=list)
    finetune_options: dict[str, Any] = field(default_factory=dict)


# The fits' point selections (docs/fit.md; study/analysis/fit.py's select_points).
MODES = ("envelope", "final", "all", "annealed")


@dataclass
class StudyFit:
    # annealed | envelope | final | all (docs/fit.md). Default: "annealed" when the base run's
    # schedule forks cooldown branches (schedule wsd, cooldowns > 0), else "envelope".
    frontier: str | None = None
    bootstrap: int = 200  # resamples over runs for parameter uncertainty
    # Drop each run's points below this fraction of its final compute before fitting: the first
    # steps (warm-up, loss above the unigram level) follow no power law.
    min_run_fraction: float = 0.1
    metric: str = "loss_in_domain"  # the loss the headline speedup uses


@dataclass
class StudyConfig:
    name: str = "study"
    data: StudyData = field(default_factory=StudyData)
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    family_keys: list[str] | None = None  # grid keys whose value joins the family name
    # Settings of some models only, as dotted run-config keys: {dense-cpu-2m: {train.lr: 4e-3}}
    # (the paper, too, gives each size its own learning rate; an MoE takes its partner's).
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Extra seeds for some models only (cheap replicates of the small sizes, for intervals):
    # {seeds: [2, 3], models: [dense-cpu-0.5m, moe-cpu-0.5m]}; each adds a run "NAME__seed=S".
    replicates: dict[str, list[Any]] = field(default_factory=dict)
    # Runs trained at once, each in its own process with `threads` threads (default: the
    # machine's cores divided among the workers): on a 2-core machine two single-threaded runs
    # of tiny models take about half the wall time. `moelab study --jobs N` sets it.
    workers: int = 1
    eval: StudyEval = field(default_factory=StudyEval)
    fit: StudyFit = field(default_factory=StudyFit)
    # Estimated training throughput for --plan when no measurement is possible, in training
    # FLOPs (paper accounting) per second. 2 CPU cores running small fp32 models reach ~1e11.
    flops_per_second: float = 1.0e11
    measure_throughput: bool = True  # time a few steps of each model for --plan
    # torch CPU threads while the study runs (null: torch's default): each run's train.threads
    # (unless its config sets one) and the evaluation's. On a CPU shared with other work, 1
    # thread can be many times faster than oversubscribed OpenMP threads.
    threads: int | None = None

    def validate(self) -> StudyConfig:
        if not self.name or "/" in self.name:
            raise MoelabError(f"name: must be a non-empty name without '/', got {self.name!r}")
        if self.data.vocab_size < 16:
            raise MoelabError(f"data.vocab_size: must be >= 16, got {self.data.vocab_size}")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise MoelabError(f"grid.{key}: expected a non-empty list of values, e.g. [1, 2]")
            if any(not p for p in key.split(".")):
                raise MoelabError(f"grid: bad key {key!r}; use dotted run-config keys")
        if "model" not in self.base and "model" not in self.grid:
            raise MoelabError("base.model: missing; name a preset in base.model or grid.model")
        if self.fit.frontier is None:
            train = self.base.get("train") or {}
            branches = train.get("schedule") == "wsd" and (train.get("cooldowns") or 0) > 0
            self.fit.frontier = "annealed" if branches else "envelope"
        if self.fit.frontier not in MODES:
            raise MoelabError(
                f"fit.frontier: must be one of {', '.join(MODES)}, not {self.fit.frontier!r}"
            )
        if not 0.0 <= self.fit.min_run_fraction < 1.0:
            raise MoelabError("fit.min_run_fraction: must be in [0, 1)")
        if self.fit.bootstrap < 0:
            raise MoelabError("fit.bootstrap: must be >= 0")
        if self.eval.shots < 0 or self.eval.seeds < 1:
            raise MoelabError("eval.shots must be >= 0 and eval.seeds >= 1")
        if self.eval.limit is not None and self.eval.limit < 1:
            raise MoelabError("eval.limit: must be >= 1 or null (every item)")
        if self.eval.fewshot_sampling not in ("per_item", "per_run"):
            raise MoelabError(
                "eval.fewshot_sampling: must be 'per_item' or 'per_run', not "
                f"{self.eval.fewshot_sampling!r}"
            )
        for task, n in self.eval.limits.items():
            if n < 1:
                raise MoelabError(f"eval.limits.{task}: must be an integer >= 1, got {n!r}")
        if self.eval.few_shot and self.eval.shots == 0:
            raise MoelabError("eval.shots: few_shot tasks need shots >= 1")
        for model, settings in self.per_model.items():
            if not isinstance(settings, dict) or not settings:
                raise MoelabError(
                    f"per_model.{model}: expected a mapping of dotted run-config keys, "
                    "e.g. {train.lr: 0.004}"
                )
        if set(self.replicates) - {"seeds", "models"}:
            raise MoelabError("replicates: expected the keys 'seeds' and 'models' only")
        if self.replicates and not (self.replicates.get("seeds") and self.replicates.get("models")):
            raise MoelabError("replicates: give both 'seeds' (a list) and 'models' (a list)")
        if self.replicates and ("seed" in self.grid or "train.seed" in self.grid):
            raise MoelabError("replicates: the grid already varies the seed; use one of the two")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise MoelabError(f"workers: must be an integer >= 1, got {self.workers!r}")
        if self.workers > 1 and self.threads is None:
            # Each worker its share of the cores: oversubscribed OpenMP threads are slower
            # than fewer. Recorded in study.yaml, so the report states what ran.
            self.threads = job_threads(self.workers)
        if self.threads is not None and self.threads < 1:
            raise MoelabError(f"threads: must be >= 1 or null, got {self.threads}")
        check_finite(self, "study")  # flops_per_second
        if not self.flops_per_second > 0:
            raise MoelabError("flops_per_second: must be a positive number")
        return self


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_threads(workers: int) -> int:
    """Each of ``workers`` jobs gets an equal share of this machine's cores (at least one)."""
    return max(1, usable_cores() // workers)


def task_label(name: str) -> str:
    """The column name of a task: registered names as they are, a JSONL path by its stem."""
    if name.endswith(".jsonl") or "/" in name:
        return name.rstrip("/").rsplit("/", 1)[-1].removesuffix(".jsonl")
    return name


def load_study(path: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """Read a study YAML (or the built-in default when ``path`` is None) and apply ``--set``
    overrides. Relative paths (data root, prepared folder) are relative to the working folder,
    like every other path on the command line."""
    if path is None:
        from moelab.study.plan.defaults import default_study_dict

        data = default_study_dict()
    else:
        data = load_yaml(path)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(StudyConfig, data).validate()


def study_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    return to_dict(cfg)
