"""From the table to the report: fits (fit, points, bootstrap, bounds), speedups and headlines
(speedup), and the report (report, sections, plots, snippet, document, designs). Method:
docs/fit.md
"""
