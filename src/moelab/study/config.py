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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moelab.config import apply_overrides, from_dict, load_yaml, to_dict
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
    finetune: list[str] = field(default_factory=list)
    finetune_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyFit:
    frontier: str = "envelope"  # "envelope": lower envelope of every validation point; "final"
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
    eval: StudyEval = field(default_factory=StudyEval)
    fit: StudyFit = field(default_factory=StudyFit)
    # Estimated training throughput for --plan when no measurement is possible, in training
    # FLOPs (paper accounting) per second. 2 CPU cores running small fp32 models reach ~1e11.
    flops_per_second: float = 1.0e11
    measure_throughput: bool = True  # time a few steps of each model for --plan
    # torch CPU threads while the study runs (null: torch's default). On a CPU shared with other
    # work, 1 thread can be many times faster than oversubscribed OpenMP threads.
    threads: int | None = None

    def validate(self) -> StudyConfig:
        if not self.name or "/" in self.name:
            raise MoelabError(f"name: must be a non-empty name without '/', got {self.name!r}")
        if self.data.vocab_size < 16:
            raise MoelabError(f"data.vocab_size: must be >= 16, got {self.data.vocab_size}")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise MoelabError(f"grid.{key}: expected a non-empty list of values, e.g. [1, 2]")
            if not key or any(not p for p in key.split(".")):
                raise MoelabError(f"grid: bad key {key!r}; use dotted run-config keys")
        if "model" not in self.base and "model" not in self.grid:
            raise MoelabError("base.model: missing; name a preset in base.model or grid.model")
        if self.fit.frontier not in ("envelope", "final"):
            raise MoelabError(
                f"fit.frontier: must be 'envelope' or 'final', not {self.fit.frontier!r}"
            )
        if not 0.0 <= self.fit.min_run_fraction < 1.0:
            raise MoelabError("fit.min_run_fraction: must be in [0, 1)")
        if self.fit.bootstrap < 0:
            raise MoelabError("fit.bootstrap: must be >= 0")
        if self.eval.shots < 0 or self.eval.seeds < 1:
            raise MoelabError("eval.shots must be >= 0 and eval.seeds >= 1")
        if self.eval.limit is not None and self.eval.limit < 1:
            raise MoelabError("eval.limit: must be >= 1 or null (every item)")
        if self.eval.few_shot and self.eval.shots == 0:
            raise MoelabError("eval.shots: few_shot tasks need shots >= 1")
        if self.threads is not None and self.threads < 1:
            raise MoelabError(f"threads: must be >= 1 or null, got {self.threads}")
        if not (self.flops_per_second > 0 and math.isfinite(self.flops_per_second)):
            raise MoelabError("flops_per_second: must be a positive number")
        return self


def task_label(name: str) -> str:
    """The column name of a task: registered names as they are, a JSONL path by its stem."""
    if name.endswith(".jsonl") or "/" in name:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        return base[: -len(".jsonl")] if base.endswith(".jsonl") else base
    return name


def load_study(path: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """Read a study YAML (or the built-in default when ``path`` is None) and apply ``--set``
    overrides. Relative paths (data root, prepared folder) are relative to the working folder,
    like every other path on the command line."""
    if path is None:
        from moelab.study.defaults import default_study_dict

        data = default_study_dict()
    else:
        data = load_yaml(path)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(StudyConfig, data).validate()


def study_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    return to_dict(cfg)
