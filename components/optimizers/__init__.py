"""Optimizers: baselines, learned optimizers, safeguards and learned-optimizer checkpoints.

Every optimizer is an ``optax.GradientTransformationExtraArgs``; per-step inputs arrive as keyword
extra args (``loss=`` for learned optimizers, ``loss_fn=`` for the LGL2O guard) and every optimizer
accepts and ignores the ones it does not use. A learned optimizer is an object with ``name``,
``config()``, ``init_meta_params(key)`` and ``make(meta_params, *, num_steps)``.
"""

from components.optimizers.baselines import adam, make_baseline, sgd
from components.optimizers.checkpoint import LOPTS, build_lopt, load, load_meta_params, save
from components.optimizers.guards import GuardWithLossState, fallback_fraction, guard_with_loss
from components.optimizers.small_fc_lopt import SmallFcLOpt

__all__ = [
    "LOPTS",
    "GuardWithLossState",
    "SmallFcLOpt",
    "adam",
    "build_lopt",
    "fallback_fraction",
    "guard_with_loss",
    "load",
    "load_meta_params",
    "make_baseline",
    "save",
    "sgd",
]
