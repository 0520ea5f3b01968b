"""Full-unroll antithetic Evolution Strategies (learned_optimization's ``FullES`` outer trainer).

Every call to :meth:`FullES.gradient` trains ``num_tasks`` *fresh* inner problems from scratch to the
end of their horizon, twice each: once with the learned optimizer's meta-parameters θ+ε and once with
θ−ε (antithetic pair, ε ~ N(0, σ²I) drawn per task, zero on frozen meta-parameters). Nothing persists
between calls, so the estimator is stateless and unbiased for the Gaussian-smoothed objective
``E_ε[L(θ+ε)]`` (which differs from ``L(θ)`` by O(σ²)):

.. math::

    T \\sim \\mathrm{LogUniform}[T_{min}, T_{max}] \\text{ (one length for all tasks)}, \\qquad
    ΔL_i = L_i(θ+ε_i) − L_i(θ−ε_i), \\qquad
    \\hat g = \\frac{1}{N}\\sum_{i=1}^{N} \\frac{ΔL_i\\,ε_i}{2σ^2}

where ``L_i`` is the unroll objective of task ``i``, built from ``ℓ_t``, the task's *normalised*
training loss (``task.normalized_loss``) of step ``t``'s minibatch at the pre-update parameters:

* ``avg``: ``(1/T) Σ_t ℓ_t``; ``min``: ``min_t ℓ_t``; ``last``: ``ℓ_{T−1}``;
* ``last_recompute``: the normalised loss at the *final* parameters (after the T-th update),
  averaged over ``recompute_samples`` fresh minibatches.

Both branches of a task see the same task, initial parameters and minibatches (the recompute batches
included), so ΔL measures the effect of ε only. A non-finite ΔL is set to 0; with ``sign_delta_loss``
set, ``ΔL ← sign(ΔL)·sign_delta_loss`` (learned_optimization's ``sign_delta_loss_scalar``).

Defaults follow learned_optimization: ``sigma=0.01``, ``loss_type="avg"``, ``recompute_samples=50``,
no sign-ΔL. What is inferred rather than taken from it: the length is not rounded to a multiple of
``steps_per_jit`` (the whole unroll is one ``lax.fori_loop`` with a traced trip count, so any length
runs without recompiling); ``clip_loss_diff`` is not offered; minibatches are drawn inside the
compiled unroll from per-step keys (``task.batch(data, key)``) rather than fed in from the host.

Key usage: ``key`` splits into 4 (length, ε, tasks, recompute); ε comes from
:func:`sample_perturbations` with the second key.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from components.meta.config import MetaTrainConfig
from components.meta.frozen import trainable_mask
from components.meta.inner import draw_batches, inner_step, sample_length
from components.meta.sharding import shard_tasks

__all__ = ["FullES", "LOSS_TYPES", "sample_perturbations", "perturb", "antithetic_gradient"]

LOSS_TYPES = ("avg", "min", "last", "last_recompute")


def sample_perturbations(lopt, meta_params: Any, sigma: float, num_tasks: int, key: jax.Array) -> Any:
    """ε ~ N(0, σ²I) with a leading task axis, zero on the leaves ``lopt`` declares frozen."""
    leaves, treedef = jax.tree_util.tree_flatten(meta_params)
    keep = jax.tree_util.tree_leaves(trainable_mask(lopt, meta_params))
    keys = jax.random.split(key, len(leaves))
    eps = [
        sigma * jax.random.normal(k, (num_tasks, *jnp.shape(p)), jnp.result_type(p)) * float(t)
        for k, p, t in zip(keys, leaves, keep)
    ]
    return jax.tree_util.tree_unflatten(treedef, eps)


def perturb(lopt, meta_params: Any, sigma: float, num_tasks: int, key: jax.Array, mesh=None) -> tuple[Any, Any]:
    """``(ε, θ±ε)``: :func:`sample_perturbations` and the antithetic pair stacked on an axis of size 2
    (leaves ``[num_tasks, 2, ...]``), both split over ``mesh``'s devices along the task axis."""
    eps = shard_tasks(sample_perturbations(lopt, meta_params, sigma, num_tasks, key), mesh)
    theta_pair = jax.tree_util.tree_map(lambda t, e: jnp.stack([t[None] + e, t[None] - e], axis=1), meta_params, eps)
    return eps, shard_tasks(theta_pair, mesh)


def antithetic_gradient(
    loss_pos: jax.Array, loss_neg: jax.Array, eps: Any, sigma: float, sign_delta_loss: float | None = None
) -> tuple[Any, jax.Array]:
    """``mean_i(ΔL_i · ε_i) / (2σ²)`` and the ΔL used (non-finite → 0, optionally sign·scalar).

    ``loss_pos`` / ``loss_neg`` are ``[num_tasks]``; ``eps`` leaves have a leading task axis.
    """
    delta = loss_pos - loss_neg
    delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
    if sign_delta_loss is not None:
        delta = jnp.sign(delta) * sign_delta_loss
    scale = delta / (2.0 * sigma**2)

    def per_leaf(e):
        return jnp.mean(scale.reshape((-1,) + (1,) * (e.ndim - 1)).astype(e.dtype) * e, axis=0)

    return jax.tree_util.tree_map(per_leaf, eps), delta


@dataclasses.dataclass(frozen=True)
class FullES:
    """Antithetic ES over whole unrolls of fresh inner problems (see the module docstring).

    Attributes:
      num_tasks: inner problems (antithetic pairs) per estimate.
      min_unroll, max_unroll: bounds of the log-uniform unroll length, one draw per call.
      sigma: standard deviation of the perturbation ε.
      loss_type: ``avg`` | ``min`` | ``last`` | ``last_recompute``.
      recompute_samples: minibatches averaged by ``last_recompute``.
      sign_delta_loss: if set, ΔL is replaced by ``sign(ΔL) * sign_delta_loss``.
      mesh: optional :func:`~components.meta.sharding.task_mesh` splitting the task axis.
    """

    num_tasks: int
    min_unroll: int
    max_unroll: int
    sigma: float = MetaTrainConfig.sigma
    loss_type: str = MetaTrainConfig.es_loss_type
    recompute_samples: int = MetaTrainConfig.es_recompute_samples
    sign_delta_loss: float | None = MetaTrainConfig.sign_delta_loss
    mesh: Any = None

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown FullES loss_type {self.loss_type!r}: use one of {list(LOSS_TYPES)}")
        if not 1 <= self.min_unroll <= self.max_unroll:
            raise ValueError(
                f"FullES needs 1 <= min_unroll <= max_unroll, got min_unroll={self.min_unroll},"
                f" max_unroll={self.max_unroll}"
            )
        if self.num_tasks < 1:
            raise ValueError(f"FullES needs num_tasks >= 1, got {self.num_tasks}")
        if self.loss_type == "last_recompute" and self.recompute_samples < 1:
            raise ValueError(f"last_recompute needs recompute_samples >= 1, got {self.recompute_samples}")

    def init_state(self, lopt, meta_params, family, key: jax.Array) -> tuple:
        """FullES keeps no inner problems between calls."""
        return ()

    def gradient(self, lopt, meta_params, family, state, data, key: jax.Array):
        """One ES estimate: ``(grad, state, aux)`` (pure, jittable; ``state`` is ``()``)."""
        k_len, k_eps, k_tasks, k_rec = jax.random.split(key, 4)
        length = sample_length(k_len, self.min_unroll, self.max_unroll)
        # θ+ε and θ−ε on an antithetic axis of size 2: [num_tasks, 2, ...]
        eps, theta_pair = perturb(lopt, meta_params, self.sigma, self.num_tasks, k_eps, self.mesh)
        task_keys = shard_tasks(jax.random.split(k_tasks, self.num_tasks), self.mesh)
        rec_keys = shard_tasks(jax.random.split(k_rec, self.num_tasks), self.mesh)
        loss_type = self.loss_type

        def one_task(theta2, task_key, rec_key):
            k_task, k_init, k_steps = jax.random.split(task_key, 3)
            task = family.sample(k_task)
            params = task.init(k_init)
            params2 = jax.tree_util.tree_map(lambda p: jnp.stack([p, p]), params)
            opt_state2 = jax.vmap(lambda th: lopt.make(th, num_steps=length).init(params))(theta2)

            def branch_step(theta, params, opt_state, batch, fresh_batch):
                return inner_step(lopt.make(theta, num_steps=length), task, params, opt_state, batch, fresh_batch)

            pair_step = jax.vmap(branch_step, in_axes=(0, 0, 0, None, None))

            def body(i, carry):
                params2, opt_state2, norm_sum, norm_min, norm_last, raw_sum = carry
                batches = draw_batches(task, data, jax.random.fold_in(k_steps, i))  # shared by both branches
                losses, params2, opt_state2 = pair_step(theta2, params2, opt_state2, *batches)
                norm = task.normalized_loss(losses).astype(jnp.float32)
                losses = losses.astype(jnp.float32)
                return params2, opt_state2, norm_sum + norm, jnp.minimum(norm_min, norm), norm, raw_sum + losses

            zeros = jnp.zeros((2,), jnp.float32)
            init = (params2, opt_state2, zeros, jnp.full((2,), jnp.inf, jnp.float32), zeros, zeros)
            params2, _, norm_sum, norm_min, norm_last, raw_sum = jax.lax.fori_loop(0, length, body, init)
            steps = length.astype(jnp.float32)
            if loss_type == "avg":
                objective = norm_sum / steps
            elif loss_type == "min":
                objective = norm_min
            elif loss_type == "last":
                objective = norm_last
            else:  # last_recompute: final params, fresh minibatches (the same ones for both branches)

                def recompute(k):
                    batch = task.batch(data, k)
                    return task.normalized_loss(jax.vmap(task.loss, in_axes=(0, None))(params2, batch))

                objective = jax.lax.map(recompute, jax.random.split(rec_key, self.recompute_samples)).mean(axis=0)
            return objective, raw_sum / steps

        objective, raw = jax.vmap(one_task)(theta_pair, task_keys, rec_keys)  # [num_tasks, 2] each
        objective = shard_tasks(objective, self.mesh)
        grad, _ = antithetic_gradient(objective[:, 0], objective[:, 1], eps, self.sigma, self.sign_delta_loss)
        aux = {
            "meta_loss": objective.mean(),
            "train_loss": raw.mean(),
            "resets": jnp.asarray(self.num_tasks, jnp.int32),
            "inner_steps": (2 * self.num_tasks * length).astype(jnp.int32),
        }
        return grad, state, aux
