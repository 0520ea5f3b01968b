"""Truncated Persistent Evolution Strategies (PES; Vicol, Metz, Sohl-Dickstein, ICML 2021).

Meta-gradient estimator for a learned optimizer θ trained on a family of inner problems that are
unrolled a truncation at a time. For each of ``num_tasks`` inner problems we keep two persistent
inner states, one driven by θ+ε and one by θ−ε (antithetic, ε ~ N(0, σ²I) redrawn each truncation),
plus the running sum of the perturbations applied to it, ``A``. Per truncation of K steps:

.. math::

    A' = A + ε, \\qquad
    \\hat g = \\frac{1}{N}\\sum_{tasks} \\frac{ΔL_{before}\\,A' + ΔL_{after}\\,ε}{2σ^2}

where ``ΔL = Σ_t (L^+_t − L^-_t) / K`` over the steps before / after an inner problem finishes and is
reset inside the window, and ``A ← ε`` after such a reset (else ``A ← A'``). ``L_t`` is the task's
*normalised* training loss of the current minibatch at the pre-update parameters (learned_optimization's
``TruncatedPES`` with ``meta_loss_split=None``); the + and − states see the same minibatches.
Inner problems have log-uniform lengths and random initial offsets so they are not in lock-step
(``LogUniformLengthSchedule``, ``random_initial_iteration_offset``).

Each inner step is :func:`~components.meta.inner.advance_inner`, the step every training loop of
this project takes. Everything is one jitted function per truncation: ``vmap`` over tasks and
``lax.scan`` over steps;
with a device mesh (:mod:`components.meta.sharding`) the task axis is split over the local devices.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from components.meta.config import MetaTrainConfig
from components.meta.es import perturb
from components.meta.inner import InnerState, advance_inner, draw_batches, fresh_inner, init_inner
from components.meta.sharding import shard_tasks
from components.tasks.base import ImageData

__all__ = ["PES", "PESState"]


class PESState(NamedTuple):
    inner: InnerState  # leading axes [num_tasks, 2]: the (θ+ε, θ−ε) pair of every task
    accum: Any  # Σ ε since the last reset, per task (meta-params shaped with a leading task axis)


@dataclasses.dataclass(frozen=True)
class PES:
    """Truncated PES (antithetic, persistent accumulators, resets inside the window).

    Attributes:
      num_tasks: persistent inner problems, each an antithetic pair of branches.
      trunc_length: inner steps per truncation.
      min_unroll, max_unroll: bounds of the log-uniform inner horizon, drawn at every reset.
      sigma: standard deviation of the perturbation ε.
      random_offset: start each inner problem at a random step of its first horizon.
      mesh: optional :func:`~components.meta.sharding.task_mesh` splitting the task axis.
    """

    num_tasks: int
    trunc_length: int
    min_unroll: int
    max_unroll: int
    sigma: float = MetaTrainConfig.sigma
    random_offset: bool = True
    mesh: Any = None

    def init_state(self, lopt, meta_params, family, key: jax.Array) -> PESState:
        """Fresh inner problems for every task, at random offsets into their horizons."""
        inner = init_inner(lopt, meta_params, family, key, self)
        pair = jax.tree_util.tree_map(lambda a: jnp.stack([a, a], axis=1), inner)
        accum = jax.tree_util.tree_map(lambda p: jnp.zeros((self.num_tasks, *p.shape), p.dtype), meta_params)
        return PESState(pair, accum)

    def gradient(
        self, lopt, meta_params, family, state: PESState, data: ImageData, key: jax.Array
    ) -> tuple[Any, PESState, dict]:
        """One PES truncation: the meta-gradient estimate, the advanced state and metrics (pure, jittable).

        Returns:
          ``(grad, new_state, aux)`` with ``aux`` holding ``meta_loss`` (mean normalised training loss
          over both antithetic branches, tasks and steps), ``train_loss`` (un-normalised), and
          ``resets`` (number of inner problems that finished in this truncation) and ``inner_steps``.
        """
        k_eps, k_steps = jax.random.split(key)
        # frozen meta-params (lopt.frozen_keys(), e.g. one of Celo's phases) are not perturbed
        eps, theta_pair = perturb(lopt, meta_params, self.sigma, self.num_tasks, k_eps, self.mesh)
        task_keys = shard_tasks(jax.random.split(k_steps, self.num_tasks), self.mesh)
        window = lambda theta2, pair, k: self._window(lopt, family, data, theta2, pair, k)  # noqa: E731
        pair, any_reset, d_before, d_after, meta_loss, loss, resets = jax.vmap(window)(
            theta_pair, shard_tasks(state.inner, self.mesh), task_keys
        )
        pair = shard_tasks(pair, self.mesh)
        grad, accum = self._estimate(meta_params, state.accum, eps, any_reset, d_before, d_after)
        aux = {
            "meta_loss": meta_loss.mean(),
            "train_loss": loss.mean(),
            "resets": resets.sum(),
            "inner_steps": jnp.asarray(self.num_tasks * 2 * self.trunc_length, jnp.int32),
        }
        return grad, PESState(pair, shard_tasks(accum, self.mesh)), aux

    def _window(self, lopt, family, data, theta2, pair: InnerState, task_key: jax.Array):
        """One task's truncation for both branches: the advanced pair, whether it reset, ΔL before /
        after the reset, and the window's mean normalised and raw losses and reset count."""
        step2 = jax.vmap(lambda th, st, b, fb: advance_inner(lopt, th, st, b, fb), in_axes=(0, 0, None, None))

        def fresh_pair(k_reset):
            # the same new problem for both branches (same key), its optimizer state built from θ±ε
            return jax.vmap(lambda th: fresh_inner(lopt, th, family, k_reset, self))(theta2)

        # Horizons are at least min_unroll long, so with min_unroll >= trunc_length an inner problem
        # ends at most once per truncation: its replacement is built once per truncation, not at
        # every inner step (where all but one would be discarded).
        once = self.min_unroll >= self.trunc_length
        k_steps_task, k_once = jax.random.split(task_key)
        fresh_once = fresh_pair(k_once) if once else None

        def body(carry, k):
            pair, after = carry
            k_batch, k_reset = jax.random.split(k)
            task = jax.tree_util.tree_map(lambda a: a[0], pair.task)  # both branches share the task
            losses, pair = step2(theta2, pair, *draw_batches(task, data, k_batch))
            done = pair.step[0] >= pair.length[0]
            fresh2 = fresh_once if once else fresh_pair(k_reset)
            pair = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), fresh2, pair)
            norm = task.normalized_loss(losses)
            out = (norm[0] - norm[1], after, norm.mean(), losses.mean(), done)
            return (pair, after | done), out

        keys = jax.random.split(k_steps_task, self.trunc_length)
        (pair, any_reset), (delta, after, meta_loss, loss, done) = jax.lax.scan(body, (pair, jnp.zeros((), bool)), keys)
        k = self.trunc_length
        d_before = jnp.sum(jnp.where(after, 0.0, delta)) / k
        d_after = jnp.sum(jnp.where(after, delta, 0.0)) / k
        return pair, any_reset, d_before, d_after, meta_loss.mean(), loss.mean(), done.sum()

    def _estimate(self, meta_params, accum, eps, any_reset, d_before, d_after) -> tuple[Any, Any]:
        """The PES estimate (mean over tasks) and the next accumulators (``ε`` after a reset)."""
        sigma, n = self.sigma, self.num_tasks

        def per_leaf(acc, e):
            acc_new = acc + e
            shape = (n,) + (1,) * (e.ndim - 1)
            g = (d_before.reshape(shape) * acc_new + d_after.reshape(shape) * e) / (2 * sigma**2)
            acc_next = jnp.where(any_reset.reshape(shape), e, acc_new)
            return jnp.mean(g, axis=0), acc_next

        pairs = jax.tree_util.tree_map(per_leaf, accum, eps)
        grad = jax.tree_util.tree_map(lambda _, pr: pr[0], meta_params, pairs)
        accum = jax.tree_util.tree_map(lambda _, pr: pr[1], meta_params, pairs)
        return grad, accum
