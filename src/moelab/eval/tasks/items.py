"""What a task is made of: items (one question with its candidates) and the task around them.

A candidate is a ``(context, continuation)`` pair; the continuation is ``delimiter + target``
and the per-character/per-byte scores divide by ``target`` alone (harness ``acc_norm``).
Multiple choice and partial scoring: docs/evaluation.md, "Tasks and where they are read from".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    contexts: tuple[str, ...]  # 1 shared context, or one per candidate (partial scoring)
    targets: tuple[str, ...]  # one per candidate, or 1 shared target (partial scoring)
    label: int  # index of the correct candidate (the first one when several are correct)
    delimiter: str = " "  # put between context and target
    # Every correct candidate when more than one is (ReCoRD: each passage entity that matches
    # one of the gold answers); empty means ``label`` alone. When set it contains ``label``.
    golds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.contexts) > 1 and len(self.targets) > 1:
            raise ValueError("an item has one shared context or one shared target, not neither")
        if not 0 <= self.label < self.n_candidates:
            raise ValueError(f"label {self.label} out of range for {self.n_candidates} candidates")
        if self.golds and (
            self.label not in self.golds
            or not all(0 <= g < self.n_candidates for g in self.golds)
            or len(set(self.golds)) != len(self.golds)
        ):
            raise ValueError(
                f"golds {self.golds} must be distinct candidates and contain label {self.label}"
            )

    @property
    def n_candidates(self) -> int:
        return max(len(self.contexts), len(self.targets))

    @property
    def correct(self) -> tuple[int, ...]:
        """Indices of the candidates that count as a right answer."""
        return self.golds or (self.label,)

    def is_correct(self, index: int) -> bool:
        return index in self.correct

    @property
    def chance(self) -> float:
        """Probability that a uniform random pick is right."""
        return len(self.correct) / self.n_candidates

    def context(self, i: int) -> str:
        return self.contexts[i if len(self.contexts) > 1 else 0]

    def target(self, i: int) -> str:
        return self.targets[i if len(self.targets) > 1 else 0]

    def candidates(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(prefix + context, delimiter + target)`` for every candidate."""
        return [
            (prefix + self.context(i), self.delimiter + self.target(i))
            for i in range(self.n_candidates)
        ]

    def demonstration(self) -> str:
        """The item solved: its correct candidate written out, used as a few-shot example."""
        return self.context(self.label) + self.delimiter + self.target(self.label)


@dataclass
class Task:
    """A loaded task. ``kind`` is "choice" (pick the best candidate) or "last_word" (LAMBADA:
    the single candidate is correct when greedy decoding reproduces all of its tokens)."""

    name: str
    kind: str
    items: list[Item]  # the evaluated split
    split: str  # its name
    train_items: list[Item] | None = None  # shots come from here when present
    train_split: str | None = None
    # Context for the calibration score; None: the task has none (no "calibrated" mode).
    neutral_prompt: str | None = "Answer:"
    finetune: str | None = None  # "classify", "choice" or None (not a fine-tuning task)
    class_names: list[str] = field(default_factory=list)  # for "classify"
    sources: list[str] = field(default_factory=list)  # files read
    # Further labelled evaluation splits scored by fine-tuning next to ``items`` (MNLI:
    # {"dev_mismatched": [...]} while ``items`` is dev_matched).
    extra_splits: dict[str, list[Item]] = field(default_factory=dict)
    # The task's own primary scoring mode (a name from scoring.MODES) when its source prescribes
    # one (e.g. "calibrated" for OpenBookQA, GPT-3 sec. 2.4); None: the evaluator's default.
    primary_mode: str | None = None
    # Per item, the groups it is reported in besides the whole task (BLiMP:
    # ("field:syntax", "paradigm:adjunct_island")); empty: no breakdown.
    groups: list[tuple[str, ...]] = field(default_factory=list)
    # Published accuracies of other models: {model: {"overall": x, "field:syntax": y, ...}}.
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    # ``limit`` counts items per group with this prefix (BLiMP: "paradigm"); None: in total.
    limit_per: str | None = None

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess (0 for open-vocabulary LAMBADA)."""
        if self.kind == "last_word" or not self.items:
            return 0.0
        return sum(it.chance for it in self.items) / len(self.items)
