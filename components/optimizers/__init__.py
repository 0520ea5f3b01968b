"""Optimizers: hand-designed baselines, learned optimizers, hybrids and safeguards, checkpoints.

Every optimizer is an ``optax.GradientTransformationExtraArgs``; per-step inputs arrive as keyword
extra args (``loss=`` for learned optimizers, ``loss_fn=`` / ``fresh_loss_fn=`` for the LGL2O and
GL2O guards) and every optimizer accepts and ignores the ones it does not use, so one training loop
drives all of them.

* ``create(name, **hyperparams)`` builds any of them by name as a transformation (``available()``
  lists the names; see :mod:`.registry` for the spec format params files use).
* ``create_learned(name, **hyperparams)`` builds the learned optimizer object meta-training needs: a
  :class:`~.per_parameter.LearnedOptimizer` with ``name``, ``config()``, ``init_meta_params(key)``,
  ``make(meta_params, *, num_steps)`` and ``frozen_keys()`` (meta-params that are not trained, e.g.
  Celo's phases); optionally ``meta_penalty(meta_params)`` (STAR's meta-level weight decay). The
  per-parameter ones are :class:`~.per_parameter.PerParameterLOpt` subclasses.
* ``save`` / ``load`` write and read checkpoints (``weights.safetensors`` + ``config.json``);
  ``load(directory)`` returns a :class:`~.checkpoint.TrainedOptimizer` whose ``make(num_steps=…)``
  is the transformation. It reads local directories only; the pipeline resolves registered model
  names to directories before calling it.
"""

from components.optimizers.baselines import BASELINES, adam, baseline_hyperparameters, sgd
from components.optimizers.celo import Celo
from components.optimizers.celo_adam import CeloAdam
from components.optimizers.checkpoint import TrainedOptimizer, load, save
from components.optimizers.gl2o import GuardWithFixedPointState, guard_with_fixed_point
from components.optimizers.guards import GuardWithLossState, fallback_fraction, guard_with_loss
from components.optimizers.hub import HubState, hand_share, hub
from components.optimizers.l3rs import L3RS
from components.optimizers.mlp_lopt import MLPLOpt
from components.optimizers.per_parameter import LearnedOptimizer, PerParameterLOpt, PerParameterState
from components.optimizers.registry import available, create, create_learned, kind_of
from components.optimizers.small_fc_lopt import SmallFcLOpt
from components.optimizers.star import STAR
from components.optimizers.velo import VeLO

__all__ = [
    "BASELINES",
    "L3RS",
    "STAR",
    "Celo",
    "CeloAdam",
    "GuardWithFixedPointState",
    "GuardWithLossState",
    "HubState",
    "LearnedOptimizer",
    "MLPLOpt",
    "PerParameterLOpt",
    "PerParameterState",
    "SmallFcLOpt",
    "TrainedOptimizer",
    "VeLO",
    "adam",
    "available",
    "baseline_hyperparameters",
    "create",
    "create_learned",
    "fallback_fraction",
    "guard_with_fixed_point",
    "guard_with_loss",
    "hand_share",
    "hub",
    "kind_of",
    "load",
    "save",
    "sgd",
]
