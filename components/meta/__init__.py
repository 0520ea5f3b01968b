"""Outer-gradient estimators (truncated PES, full ES, truncated backprop) and the meta-training loop."""

from components.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.meta.estimators import ESTIMATORS, PES, build_estimator
from components.meta.pes import (
    InnerState,
    PESConfig,
    PESState,
    init_pes_state,
    pes_gradient,
    sample_length,
)
from components.meta.sharding import task_mesh
from components.meta.train import MetaTrainConfig, MetaTrainResult, meta_train, outer_optimizer

__all__ = [
    "CheckpointError",
    "ESTIMATORS",
    "InnerState",
    "PES",
    "PESConfig",
    "PESState",
    "build_estimator",
    "init_pes_state",
    "load_checkpoint",
    "pes_gradient",
    "sample_length",
    "save_checkpoint",
    "task_mesh",
    "MetaTrainConfig",
    "MetaTrainResult",
    "meta_train",
    "outer_optimizer",
]
