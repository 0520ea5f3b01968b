"""Evaluation runner and metrics."""

from components.evaluation.metrics import ema, speedup_over, steps_to_reach, summarize_runs
from components.evaluation.runner import OptFactory, run_training, train_curves

__all__ = ["ema", "speedup_over", "steps_to_reach", "summarize_runs", "OptFactory", "run_training", "train_curves"]
