"""Running a study: the sweep that prepares data, trains and evaluates every run (sweep,
evaluate, data), alone or in worker processes and under torchrun (launch), one run per Slurm
array task (slurm, task), and how a study stops on a signal (stopping).
"""
