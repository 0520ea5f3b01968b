"""Outer-gradient estimators behind one interface, so the meta-training loop can mix them.

An estimator turns meta-parameters θ, a task family and its data into an estimate of the gradient of
the meta-objective (the mean *normalised* training loss of inner problems trained by the learned
optimizer, ``research/algorithms.md`` §0.3). Every estimator is a frozen dataclass with

* ``init_state(lopt, meta_params, family, key) -> state``: its persistent inner problems (``()`` for
  the stateless ones);
* ``gradient(lopt, meta_params, family, state, data, key) -> (grad, state, aux)``: pure and jittable;
  ``aux`` holds scalars ``meta_loss``, ``train_loss``, ``resets`` and ``inner_steps`` (inner
  optimizer steps done by this call, over the whole population);
* ``mesh``: ``None``, or a :func:`~components.meta.sharding.task_mesh` that splits the task axis over
  local devices.

Implementations:

* :class:`~components.meta.pes.PES`: truncated Persistent Evolution Strategies;
* :class:`~components.meta.es.FullES`: antithetic ES over whole unrolls (loss types avg / min / last /
  last_recompute, optional sign-ΔL);
* :class:`~components.meta.tbptt.TruncatedBackprop`: backpropagation through each truncation of
  persistent inner problems.

:func:`build_estimator` makes the one a :class:`~components.meta.config.MetaTrainConfig` names.
"""

from typing import Any

from components.meta.config import MetaTrainConfig
from components.meta.es import FullES
from components.meta.pes import PES
from components.meta.tbptt import TruncatedBackprop

__all__ = ["ESTIMATORS", "build_estimator"]

ESTIMATORS = ("pes", "es", "tbptt")


def build_estimator(cfg: MetaTrainConfig, mesh: Any = None):
    """The estimator ``cfg.estimator`` (one of :data:`ESTIMATORS`) with the settings of ``cfg`` that
    apply to it; ``mesh`` splits its task axis over devices."""
    if cfg.estimator == "pes":
        return PES(cfg.num_tasks, cfg.trunc_length, cfg.min_unroll, cfg.max_unroll, cfg.sigma, mesh=mesh)
    if cfg.estimator == "es":
        return FullES(
            cfg.num_tasks,
            cfg.min_unroll,
            cfg.max_unroll,
            cfg.sigma,
            loss_type=cfg.es_loss_type,
            recompute_samples=cfg.es_recompute_samples,
            sign_delta_loss=cfg.sign_delta_loss,
            mesh=mesh,
        )
    if cfg.estimator == "tbptt":
        return TruncatedBackprop(cfg.num_tasks, cfg.trunc_length, cfg.min_unroll, cfg.max_unroll, mesh=mesh)
    raise ValueError(f"unknown meta-gradient estimator {cfg.estimator!r}: use one of {list(ESTIMATORS)}")
