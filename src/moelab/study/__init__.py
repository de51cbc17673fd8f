"""The study: a grid of dense and MoE runs at matched compute, its fits, speedups and report.
Notebook API (docs/python-api.md; ``run_study(..., plan_only=True)`` prints the plan only),
imported on first use (moelab/lazy.py) so importing the fits does not import the trainer.
"""

from moelab.lazy import lazy_names

__all__, __getattr__, __dir__ = lazy_names(
    __name__,
    {
        "plan.config": ("StudyConfig", "load_study"),
        "run.sweep": ("run_study",),
        "analysis.report": ("build_report",),
        "results.table": ("read_results",),
    },
)
