"""The inner training step, written once: every loop that trains a task with an optax optimizer uses it.

PES, full ES and truncated backprop (:mod:`components.meta`) advance their inner problems with it, and
so do the evaluation runner and calibration (:mod:`components.evaluation.runner`). One step at
parameters ``p`` on minibatch ``b``:

.. math::

    ℓ, g = \\mathrm{value\\_and\\_grad}(L)(p, b), \\qquad
    u, s' = \\mathrm{opt.update}(g, s, p,\\ \\mathrm{loss}=ℓ,\\ \\mathrm{loss\\_fn}=L(\\cdot, b),
    \\ \\mathrm{fresh\\_loss\\_fn}=L(\\cdot, b')), \\qquad
    p' = \\mathrm{optax.apply\\_updates}(p, u)

where ``b'`` is an independent minibatch (LGL2O's ``loss_batch="fresh"`` estimates losses on it).
Every optimizer receives the same three keyword extra args; one that does not use ``loss_fn`` /
``fresh_loss_fn`` ignores them, and XLA drops the unused sampling of ``b'``. The step does not mask
non-finite values: safeguards wrap the optimizer and count them, the meta-trainer zeroes and counts
non-finite meta-gradients.

An inner problem of meta-training is an :class:`InnerState`: its task, parameters, optimizer state,
step and horizon (log-uniform in ``[min_unroll, max_unroll]``, :func:`sample_length`), built by
:func:`fresh_inner` and advanced by :func:`advance_inner`.

Example:
  >>> batch, fresh = draw_batches(task, data, key)
  >>> loss, params, opt_state = inner_step(optax.adam(1e-3), task, params, opt_state, batch, fresh)
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from components.tasks.protocol import TaskProtocol as Task

__all__ = [
    "InnerState",
    "advance_inner",
    "draw_batches",
    "fresh_inner",
    "init_inner",
    "inner_step",
    "sample_length",
]


class InnerState(NamedTuple):
    """One inner problem of meta-training (leading task / branch axes when batched)."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32, inner iteration
    length: jax.Array  # int32, this inner problem's horizon
    task: Task


def draw_batches(task: Task, data: Any, key: jax.Array, fresh_key: jax.Array | None = None) -> tuple[Any, Any]:
    """The step's minibatch (from ``key``) and an independent one (from ``fresh_key``, default
    ``fold_in(key, 1)``) for the ``fresh_loss_fn`` extra arg."""
    fresh_key = jax.random.fold_in(key, 1) if fresh_key is None else fresh_key
    return task.batch(data, key), task.batch(data, fresh_key)


def inner_step(
    opt: optax.GradientTransformationExtraArgs, task: Task, params: Any, opt_state: Any, batch: Any, fresh_batch: Any
) -> tuple[jax.Array, Any, Any]:
    """One training step of ``task`` with ``opt`` (see the module docstring; pure, traceable).

    Args:
      opt: any optimizer of this project (baseline, learned, hybrid, safeguarded).
      task: the problem (its ``loss(params, batch)``).
      params, opt_state: the current parameters and optimizer state.
      batch: the minibatch the gradient is computed on.
      fresh_batch: an independent minibatch (:func:`draw_batches`), for ``fresh_loss_fn``.

    Returns:
      ``(loss, params, opt_state)``: the minibatch loss at the *pre-update* parameters, then the
      updated parameters and optimizer state.
    """
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    updates, opt_state = opt.update(
        grads,
        opt_state,
        params,
        loss=loss,
        loss_fn=lambda p: task.loss(p, batch),
        fresh_loss_fn=lambda p: task.loss(p, fresh_batch),
    )
    return loss, optax.apply_updates(params, updates), opt_state


def sample_length(key: jax.Array, lo: int, hi: int) -> jax.Array:
    """Inner-problem length ~ exp(U[log lo, log hi]) rounded to an int."""
    u = jax.random.uniform(key, (), jnp.float32, math.log(lo), math.log(hi))
    return jnp.clip(jnp.round(jnp.exp(u)), lo, hi).astype(jnp.int32)


def fresh_inner(lopt, meta_params, family, key: jax.Array, horizons) -> InnerState:
    """A new inner problem: task, horizon and initial params from ``key``; optimizer state from θ.

    ``horizons`` is an estimator's settings: the horizon is log-uniform in
    ``[horizons.min_unroll, horizons.max_unroll]``.
    """
    k_task, k_len, k_init = jax.random.split(key, 3)
    task = family.sample(k_task)
    length = sample_length(k_len, horizons.min_unroll, horizons.max_unroll)
    params = task.init(k_init)
    opt = lopt.make(meta_params, num_steps=length)
    return InnerState(params, opt.init(params), jnp.zeros((), jnp.int32), length, task)


def init_inner(lopt, meta_params, family, key: jax.Array, horizons) -> InnerState:
    """``horizons.num_tasks`` fresh inner problems (leading task axis); with ``horizons.random_offset``
    each starts at a random step of its horizon, so that they are not in lock-step."""
    k_inner, k_off = jax.random.split(key)
    keys = jax.random.split(k_inner, horizons.num_tasks)
    inner = jax.vmap(lambda k: fresh_inner(lopt, meta_params, family, k, horizons))(keys)
    offsets = jax.random.uniform(k_off, (horizons.num_tasks,)) * float(horizons.random_offset)
    return inner._replace(step=jnp.floor(offsets * inner.length.astype(jnp.float32)).astype(jnp.int32))


def advance_inner(lopt, meta_params, state: InnerState, batch: Any, fresh_batch: Any) -> tuple[jax.Array, InnerState]:
    """:func:`inner_step` of an inner problem with the learned optimizer at ``meta_params``:
    ``(loss at the pre-update parameters, the advanced state)``."""
    opt = lopt.make(meta_params, num_steps=state.length)
    loss, params, opt_state = inner_step(opt, state.task, state.params, state.opt_state, batch, fresh_batch)
    return loss, state._replace(params=params, opt_state=opt_state, step=state.step + 1)
