"""Evaluation: per-domain perplexity, zero/few-shot priming on a task registry, fine-tuning.

The notebook API (docs/python-api.md): :func:`run_perplexity`, :func:`run_priming` and
:func:`finetune_run` take a run folder and return the result dict ``moelab eval`` /
``moelab finetune`` print with ``--json``; :func:`write_result` keeps one under ``RUN/eval``.
:func:`open_run` loads a run's model and tokenizer once for several calls (``opened=``);
:func:`evaluate_perplexity` and :func:`evaluate_task` take a model and tokenizer in memory.
The names are imported on first use (moelab/lazy.py).
"""

from moelab.lazy import lazy_names

__all__, __getattr__, __dir__ = lazy_names(
    __name__,
    {
        "runs": ("OpenedRun", "open_run"),
        "perplexity": ("PplSource", "evaluate_perplexity", "run_perplexity"),
        "priming": ("evaluate_task", "run_priming"),
        "finetune": ("FinetuneSettings", "finetune_run"),
        "tasks": ("Task", "get_task"),
        "results": ("perplexity_table", "priming_rows", "write_result"),
    },
)
