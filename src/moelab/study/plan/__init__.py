"""What a study will run: the study file (config, defaults), the grid of runs and their
names (grid), where everything lives on disk and a run's state (layout), and each run's
parameters, tokens, FLOPs and estimated time (estimate).
"""
