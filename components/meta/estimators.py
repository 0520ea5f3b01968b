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

* :class:`PES`: truncated Persistent Evolution Strategies (:mod:`components.meta.pes`);
* :class:`~components.meta.es.FullES`: antithetic ES over whole unrolls (loss types avg / min / last /
  last_recompute, optional sign-ΔL);
* :class:`~components.meta.tbptt.TruncatedBackprop`: backpropagation through each truncation of
  persistent inner problems.

:func:`build_estimator` makes one from the names used in params.
"""

import dataclasses
from typing import Any

import jax

from components.meta.pes import PESConfig, PESState, init_pes_state, pes_gradient

__all__ = ["PES", "ESTIMATORS", "build_estimator"]

ESTIMATORS = ("pes", "es", "tbptt")


@dataclasses.dataclass(frozen=True)
class PES:
    """Truncated PES (antithetic, persistent accumulators, resets inside the window)."""

    num_tasks: int
    trunc_length: int
    min_unroll: int
    max_unroll: int
    sigma: float = 0.01
    random_offset: bool = True
    mesh: Any = None

    @property
    def config(self) -> PESConfig:
        return PESConfig(
            self.num_tasks, self.trunc_length, self.min_unroll, self.max_unroll, self.sigma, self.random_offset
        )

    def init_state(self, lopt, meta_params, family, key: jax.Array) -> PESState:
        return init_pes_state(lopt, meta_params, family, self.config, key)

    def gradient(self, lopt, meta_params, family, state: PESState, data, key: jax.Array):
        return pes_gradient(lopt, meta_params, family, self.config, state, data, key, mesh=self.mesh)


def build_estimator(
    name: str,
    *,
    num_tasks: int,
    trunc_length: int,
    min_unroll: int,
    max_unroll: int,
    sigma: float = 0.01,
    es_loss_type: str = "avg",
    es_recompute_samples: int = 50,
    sign_delta_loss: float | None = None,
    mesh: Any = None,
):
    """The estimator ``name`` (one of :data:`ESTIMATORS`) with the settings that apply to it."""
    if name == "pes":
        return PES(num_tasks, trunc_length, min_unroll, max_unroll, sigma, mesh=mesh)
    if name == "es":
        from components.meta.es import FullES  # noqa: PLC0415

        return FullES(
            num_tasks,
            min_unroll,
            max_unroll,
            sigma,
            loss_type=es_loss_type,
            recompute_samples=es_recompute_samples,
            sign_delta_loss=sign_delta_loss,
            mesh=mesh,
        )
    if name == "tbptt":
        from components.meta.tbptt import TruncatedBackprop  # noqa: PLC0415

        return TruncatedBackprop(num_tasks, trunc_length, min_unroll, max_unroll, mesh=mesh)
    raise ValueError(f"unknown meta-gradient estimator {name!r}: use one of {list(ESTIMATORS)}")
