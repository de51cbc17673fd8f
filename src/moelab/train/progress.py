"""The training bar (:mod:`moelab.progress`): steps, loss, tokens/s and ETA for the budget."""

from __future__ import annotations

from moelab.progress import bars


class ProgressBar:
    def __init__(self, total_steps: int, start_step: int, *, enabled: bool, title: str):
        columns = ("[bold]{task.description}", "bar", "count", "loss {task.fields[loss]}")
        columns += ("{task.fields[tps]} tok/s", "elapsed", "ETA", "eta")
        self._bars = bars(enabled, *columns)
        self._bars.start()
        self._task = self._bars.add_task(
            title, total=total_steps, completed=start_step, loss="-", tps="-"
        )

    def update(self, step: int, loss: float | None = None, tokens_per_s: float | None = None):
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            fields["tps"] = f"{tokens_per_s:,.0f}"
        self._bars.update(self._task, completed=step, **fields)

    def close(self) -> None:
        self._bars.stop()
