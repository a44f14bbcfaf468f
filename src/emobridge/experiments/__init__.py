"""Experiments: the config schema, the grid runner, the results folder and the report.

``emobridge run CONFIG`` is :func:`load_config` + :func:`run_experiment`.
"""

from emobridge.experiments.config import ExperimentConfig, load_config, validate_config
from emobridge.experiments.results import CellKey, Task
from emobridge.experiments.runner import ExperimentError, RunSummary, run_experiment

__all__ = [
    "CellKey",
    "ExperimentConfig",
    "ExperimentError",
    "RunSummary",
    "Task",
    "load_config",
    "run_experiment",
    "validate_config",
]
