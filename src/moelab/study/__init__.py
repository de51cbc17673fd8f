"""The study: a grid of dense and MoE runs at matched compute, fits of quality against compute,
speedup factors, and the report.

The notebook API (docs/python-api.md): :func:`load_study` reads a study YAML (None: the
built-in default) with ``--set``-style overrides into a :class:`StudyConfig`; :func:`run_study`
checks, trains, evaluates and reports it in a folder (``plan_only=True``: print the plan only);
:func:`build_report` rebuilds table, fits, plots and report.md from the finished runs;
:func:`read_results` gives the table's rows and metadata back. The names are imported on first
use (moelab/lazy.py), so importing ``moelab.study.analysis.fit`` does not import the trainer.
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
