"""The study: a grid of dense and MoE runs at matched compute, fits of quality against compute,
speedup factors, and the report.

Submodules: ``fit`` (power laws, monotone fits, speedup), and the grid runner and report.
"""
