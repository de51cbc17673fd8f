"""Few-shot prompts: k solved examples before the evaluated item, separated by a newline.

Shots come from the task's training split when it has one, else from the evaluated split with
the item itself left out. Two ways to draw them (``sampling``):

- ``per_item`` (the default): for seed ``s`` and item ``i`` the examples are drawn from a
  generator seeded with ``(s, i)``, so every item gets its own draw;
- ``per_run``: one draw per seed, used for every item, as fairseq's few-shot evaluation does
  (each trial takes one random subset of the training set and primes every evaluated item with
  it). The items run through one permutation of the pool seeded with ``s``; each item takes the
  first k distinct examples of it that are not the item itself, so every item gets the same k
  examples except an item that is one of them (it takes the next example instead).

Either way the same seed always gives the same prompts, and the k examples are distinct from
each other and from the evaluated item (also when a split holds duplicate items).
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
