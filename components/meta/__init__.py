"""Outer trainers (truncated PES) and the meta-training loop."""

from components.meta.pes import (
    InnerState,
    PESConfig,
    PESState,
    init_pes_state,
    pes_gradient,
    sample_length,
)
from components.meta.train import MetaTrainConfig, MetaTrainResult, meta_train, outer_optimizer

__all__ = [
    "InnerState",
    "PESConfig",
    "PESState",
    "init_pes_state",
    "pes_gradient",
    "sample_length",
    "MetaTrainConfig",
    "MetaTrainResult",
    "meta_train",
    "outer_optimizer",
]
