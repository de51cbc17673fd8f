"""Evaluation tasks: the registry, the loaders and the generic JSONL schema."""

from moelab.eval.tasks.items import Item, Task
from moelab.eval.tasks.registry import ENV_TASKS_DIR, TASKS, default_tasks_dir, get_task

__all__ = ["ENV_TASKS_DIR", "TASKS", "Item", "Task", "default_tasks_dir", "get_task"]
