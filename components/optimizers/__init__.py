"""Optimizers: hand-designed baselines, learned optimizers, hybrids and safeguards, checkpoints.

Every optimizer is an ``optax.GradientTransformationExtraArgs``; per-step inputs arrive as keyword
extra args (``loss=`` for learned optimizers, ``loss_fn=`` / ``fresh_loss_fn=`` for the LGL2O and
GL2O guards) and every optimizer accepts and ignores the ones it does not use, so one training loop
drives all of them.

* ``create(name, **hyperparams)`` builds any of them by name (``available()`` lists the names; see
  :mod:`.registry` for the spec format params files use).
* A learned optimizer is an object with ``name``, ``config()``, ``init_meta_params(key)`` and
  ``make(meta_params, *, num_steps)``; optionally ``frozen_keys()`` (meta-params that are not
  trained, e.g. Celo's phases) and ``meta_penalty(meta_params)`` (STAR's meta-level weight decay).
* ``save`` / ``load`` write and read checkpoints (``weights.safetensors`` + ``config.json``);
  ``load`` also takes a registered model name when the pipeline is installed.
"""

from components.optimizers.baselines import BASELINES, adam, baseline_hyperparameters, make_baseline, sgd
from components.optimizers.celo import Celo, CeloAdam
from components.optimizers.checkpoint import LOPTS, build_lopt, load, load_meta_params, resolve, save
from components.optimizers.gl2o import GuardWithFixedPointState, guard_with_fixed_point
from components.optimizers.guards import GuardWithLossState, fallback_fraction, guard_with_loss
from components.optimizers.hub import HubState, hand_share, hub
from components.optimizers.l3rs import L3RS
from components.optimizers.mlp_lopt import MLPLOpt
from components.optimizers.registry import available, create, kind_of, learned_optimizer
from components.optimizers.small_fc_lopt import SmallFcLOpt
from components.optimizers.star import STAR
from components.optimizers.velo import VeLO

__all__ = [
    "BASELINES",
    "L3RS",
    "LOPTS",
    "STAR",
    "Celo",
    "CeloAdam",
    "GuardWithFixedPointState",
    "GuardWithLossState",
    "HubState",
    "MLPLOpt",
    "SmallFcLOpt",
    "VeLO",
    "adam",
    "available",
    "baseline_hyperparameters",
    "build_lopt",
    "create",
    "fallback_fraction",
    "guard_with_fixed_point",
    "guard_with_loss",
    "hand_share",
    "hub",
    "kind_of",
    "learned_optimizer",
    "load",
    "load_meta_params",
    "make_baseline",
    "resolve",
    "save",
    "sgd",
]
