"""Evaluation runner and metrics."""

from components.evaluation.metrics import (
    adam_envelope,
    ema,
    final_loss_ratio,
    speedup_over_adam,
    steps_to_reach,
    summarize_runs,
)
from components.evaluation.runner import OptFactory, run_training, train_curves

__all__ = [
    "adam_envelope",
    "ema",
    "final_loss_ratio",
    "speedup_over_adam",
    "steps_to_reach",
    "summarize_runs",
    "OptFactory",
    "run_training",
    "train_curves",
]
