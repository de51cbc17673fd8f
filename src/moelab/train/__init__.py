"""Training: run configs, the training loop, checkpoints, metrics and loading trained models."""

from moelab.train.budget import Budget, eval_steps, resolve_budget
from moelab.train.config import (
    DataSection,
    RunConfig,
    TrainConfig,
    config_differences,
    load_run_config,
    run_config_from_dict,
)
from moelab.train.loading import load_model
from moelab.train.metrics import read_metrics
from moelab.train.run import train
from moelab.train.rundir import read_run_config
from moelab.train.trainer import Trainer, TrainingDiverged

__all__ = [
    "Budget",
    "DataSection",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "config_differences",
    "eval_steps",
    "load_model",
    "load_run_config",
    "read_metrics",
    "read_run_config",
    "resolve_budget",
    "run_config_from_dict",
    "train",
]
