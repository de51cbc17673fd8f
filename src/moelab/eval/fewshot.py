"""Few-shot prompts: k solved examples before the evaluated item, separated by a newline.

Where shots come from and the ``per_item`` / ``per_run`` draws: docs/evaluation.md,
"Prompts and few-shot sampling".
"""

from __future__ import annotations

import numpy as np

from moelab.errors import MoelabError
from moelab.eval.tasks.items import Item, Task

SAMPLING = ("per_item", "per_run")


def check_sampling(sampling: str) -> str:
    if sampling not in SAMPLING:
        raise MoelabError(
            f"{{key}} must be one of {', '.join(SAMPLING)}, got {sampling!r}",
            key="fewshot_sampling",
        )
    return sampling


def sample_shots(
    task: Task, index: int, k: int, seed: int, sampling: str = "per_item"
) -> list[Item]:
    """``k`` distinct demonstration items for evaluated item ``index`` of ``task.items``."""
    check_sampling(sampling)
    if k <= 0:
        return []
    item = task.items[index]
    same_split = not task.train_items
    pool = task.items if same_split else task.train_items
    rng = np.random.default_rng([seed, index] if sampling == "per_item" else [seed])
    own = item.demonstration()
    chosen: list[Item] = []
    seen = {own}
    for j in rng.permutation(len(pool)):
        if same_split and j == index:
            continue
        demo = pool[j].demonstration()
        if demo in seen:
            continue
        seen.add(demo)
        chosen.append(pool[j])
        if len(chosen) == k:
            return chosen
    where = "its training split" if not same_split else "the evaluated split minus the item"
    raise MoelabError(
        f"task {task.name}: {k} shots requested but {where} has only {len(chosen)} distinct "
        "examples; lower {key}",
        key="shots",
    )


def shot_prefix(shots: list[Item], separator: str) -> str:
    """The solved examples, each followed by ``separator``."""
    return "".join(s.demonstration() + separator for s in shots)
