"""Evaluation runner, per-task metrics and cross-task statistics."""

from components.evaluation.metrics import (
    adam_envelope,
    ema,
    final_loss_ratio,
    speedup_over_adam,
    steps_to_reach,
    summarize_runs,
)
from components.evaluation.runner import OptFactory, WithWeights, run_training, split_weights, train_curves
from components.evaluation.stats import (
    aggregate_scores,
    iqm,
    performance_profile,
    stratified_bootstrap_ci,
    win_fractions,
)

__all__ = [
    "adam_envelope",
    "ema",
    "final_loss_ratio",
    "speedup_over_adam",
    "steps_to_reach",
    "summarize_runs",
    "OptFactory",
    "WithWeights",
    "run_training",
    "split_weights",
    "train_curves",
    "aggregate_scores",
    "iqm",
    "performance_profile",
    "stratified_bootstrap_ci",
    "win_fractions",
]
