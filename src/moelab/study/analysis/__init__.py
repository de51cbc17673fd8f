"""From the table to the report: power-law and monotone fits (fit, points), bootstrap
intervals (bootstrap), measured bounds (bounds), speedups and headlines (speedup), the
report's sections, figures and README snippet (report, sections, plots, snippet, document).
"""
