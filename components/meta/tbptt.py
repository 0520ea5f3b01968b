"""Truncated backpropagation through time (learned_optimization's ``TruncatedGrad`` outer trainer).

``num_tasks`` persistent inner problems (one per task, no antithetic pair) are advanced
``trunc_length`` steps per call by the learned optimizer with meta-parameters θ. The estimate is the
exact gradient of the window's mean normalised training loss,

.. math::

    \\hat g = \\nabla_θ \\frac{1}{N K}\\sum_{i=1}^{N}\\sum_{t=s}^{s+K-1} ℓ_{i,t}(θ),

where ``ℓ_{i,t}`` is task ``i``'s ``task.normalized_loss`` of step ``t``'s minibatch at the
pre-update parameters and the inner state entering the window is ``stop_gradient``-ed: the
dependence of the window on earlier windows is dropped (that is the truncation bias, which PES
removes). An inner problem that reaches the end of its horizon inside the window is reset (new task,
horizon, parameters and optimizer state, all built from stop-gradiented θ) and the window goes on
with it, so one window may average over the end of one trajectory and the start of the next.
Horizons are log-uniform in ``[min_unroll, max_unroll]`` and, with ``random_offset``, each inner
problem starts at a random step of its first horizon, as for PES (:mod:`components.meta.pes`).

Differences from learned_optimization (inferred, not copied): no ``steps_per_jit`` chunking (one
``lax.scan`` per window) and only the ``avg`` loss; gradients on frozen meta-parameters
(``lopt.frozen_keys()``) are set to zero.

Caveat: backpropagating through a learned optimizer whose features have no epsilon (e.g.
``m · v^{-1/2}``) gives NaN where a gradient is exactly zero, even when the forward pass is finite
(``jnp.where`` does not stop a NaN cotangent). The meta-trainer zeroes and counts non-finite
meta-gradients; this estimator returns them as they are.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from components.meta.frozen import trainable_mask
from components.meta.inner import InnerState, advance_inner, draw_batches, fresh_inner, init_inner
from components.meta.sharding import shard_tasks

__all__ = ["TruncatedBackprop"]


@dataclasses.dataclass(frozen=True)
class TruncatedBackprop:
    """Truncated BPTT over persistent inner problems (see the module docstring).

    Attributes:
      num_tasks: persistent inner problems (one per task, no antithetic pair).
      trunc_length: inner steps per call (the backpropagation window).
      min_unroll, max_unroll: bounds of the log-uniform inner horizon, drawn at every reset; with
        random_offset, each inner problem starts at a random step of its first horizon.
      mesh: optional :func:`~components.meta.sharding.task_mesh` splitting the task axis.
    """

    num_tasks: int
    trunc_length: int
    min_unroll: int
    max_unroll: int
    random_offset: bool = True
    mesh: Any = None

    def __post_init__(self):
        if not 1 <= self.min_unroll <= self.max_unroll:
            raise ValueError(
                f"TruncatedBackprop needs 1 <= min_unroll <= max_unroll, got min_unroll={self.min_unroll},"
                f" max_unroll={self.max_unroll}"
            )
        if self.num_tasks < 1 or self.trunc_length < 1:
            raise ValueError(
                f"TruncatedBackprop needs num_tasks >= 1 and trunc_length >= 1, got {self.num_tasks}"
                f" and {self.trunc_length}"
            )

    def init_state(self, lopt, meta_params, family, key: jax.Array) -> InnerState:
        """Fresh inner problems (leading task axis), at random offsets into their horizons."""
        return init_inner(lopt, meta_params, family, key, self)

    def gradient(self, lopt, meta_params, family, state: InnerState, data, key: jax.Array):
        """One window: ``(grad, new_state, aux)`` (pure, jittable)."""
        start = shard_tasks(jax.tree_util.tree_map(jax.lax.stop_gradient, state), self.mesh)
        task_keys = shard_tasks(jax.random.split(key, self.num_tasks), self.mesh)

        def window_loss(theta):
            theta_const = jax.lax.stop_gradient(theta)

            def one_task(inner: InnerState, task_key):
                def body(inner, k):
                    k_batch, k_reset = jax.random.split(k)
                    task = inner.task
                    loss, inner = advance_inner(lopt, theta, inner, *draw_batches(task, data, k_batch))
                    done = inner.step >= inner.length
                    fresh = fresh_inner(lopt, theta_const, family, k_reset, self)
                    inner = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), fresh, inner)
                    return inner, (task.normalized_loss(loss), loss, done)

                keys = jax.random.split(task_key, self.trunc_length)
                inner, (norm, loss, done) = jax.lax.scan(body, inner, keys)
                return inner, norm.mean(), loss.mean(), done.sum()

            inner, norm, loss, resets = jax.vmap(one_task)(start, task_keys)
            return norm.mean(), (inner, loss.mean(), resets.sum())

        (meta_loss, (inner, train_loss, resets)), grad = jax.value_and_grad(window_loss, has_aux=True)(meta_params)
        mask = trainable_mask(lopt, meta_params)
        grad = jax.tree_util.tree_map(lambda g, keep: g if keep else jnp.zeros_like(g), grad, mask)
        inner = shard_tasks(jax.lax.stop_gradient(inner), self.mesh)
        aux = {
            "meta_loss": meta_loss,
            "train_loss": train_loss,
            "resets": resets.astype(jnp.int32),
            "inner_steps": jnp.asarray(self.num_tasks * self.trunc_length, jnp.int32),
        }
        return grad, inner, aux
