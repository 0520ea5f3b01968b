"""Outer-gradient estimators (truncated PES, full ES, truncated backprop), the inner step they share
with the evaluation, the meta-training settings and loop."""

from components.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.meta.config import MetaTrainConfig, MetaTrainPhase, MetaTrainPreset, load_preset
from components.meta.es import FullES
from components.meta.estimators import ESTIMATORS, build_estimator
from components.meta.inner import InnerState, draw_batches, inner_step, sample_length
from components.meta.pes import PES, PESState
from components.meta.sharding import task_mesh
from components.meta.tbptt import TruncatedBackprop
from components.meta.train import MetaTrainResult, NonFiniteMetaParamsError, meta_train, outer_optimizer

__all__ = [
    "CheckpointError",
    "ESTIMATORS",
    "FullES",
    "InnerState",
    "MetaTrainConfig",
    "MetaTrainPhase",
    "MetaTrainPreset",
    "MetaTrainResult",
    "NonFiniteMetaParamsError",
    "PES",
    "PESState",
    "TruncatedBackprop",
    "build_estimator",
    "draw_batches",
    "inner_step",
    "load_checkpoint",
    "load_preset",
    "meta_train",
    "outer_optimizer",
    "sample_length",
    "save_checkpoint",
    "task_mesh",
]
