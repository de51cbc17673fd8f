"""From the table to the report: fits (fit, points, bootstrap, bounds; method: docs/fit.md),
speedups and headlines (speedup), the report (report, sections, plots, snippet, document, designs).
"""
