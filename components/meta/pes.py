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

Everything is one jitted function per truncation: ``vmap`` over tasks and ``lax.scan`` over steps;
with a device mesh (:mod:`components.meta.sharding`) the task axis is split over the local devices.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from components.meta.frozen import trainable_mask
from components.meta.sharding import shard_tasks
from components.tasks.base import ImageData, Task

__all__ = ["InnerState", "PESState", "PESConfig", "init_pes_state", "pes_gradient", "sample_length"]


class InnerState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32, inner iteration
    length: jax.Array  # int32, this inner problem's horizon
    task: Task


class PESState(NamedTuple):
    inner: InnerState  # leading axes [num_tasks, 2]: the (θ+ε, θ−ε) pair of every task
    accum: Any  # Σ ε since the last reset, per task (meta-params shaped with a leading task axis)


class PESConfig(NamedTuple):
    num_tasks: int
    trunc_length: int
    min_unroll: int
    max_unroll: int
    sigma: float
    random_offset: bool = True  # start each inner problem at a random step of its horizon


def sample_length(key: jax.Array, lo: int, hi: int) -> jax.Array:
    """Inner-problem length ~ exp(U[log lo, log hi]) rounded to an int."""
    u = jax.random.uniform(key, (), jnp.float32, math.log(lo), math.log(hi))
    return jnp.clip(jnp.round(jnp.exp(u)), lo, hi).astype(jnp.int32)


def _fresh_inner(lopt, meta_params, family, cfg: PESConfig, key: jax.Array) -> InnerState:
    """A new inner problem: task, horizon and initial params from ``key``; optimizer state from θ."""
    k_task, k_len, k_init = jax.random.split(key, 3)
    task = family.sample(k_task)
    length = sample_length(k_len, cfg.min_unroll, cfg.max_unroll)
    params = task.init(k_init)
    opt = lopt.make(meta_params, num_steps=length)
    return InnerState(params, opt.init(params), jnp.zeros((), jnp.int32), length, task)


def init_pes_state(lopt, meta_params, family, cfg: PESConfig, key: jax.Array) -> PESState:
    """Fresh inner problems for every task, at random offsets into their horizons."""
    k_inner, k_off = jax.random.split(key)
    keys = jax.random.split(k_inner, cfg.num_tasks)
    inner = jax.vmap(lambda k: _fresh_inner(lopt, meta_params, family, cfg, k))(keys)
    offsets = jax.random.uniform(k_off, (cfg.num_tasks,)) * float(cfg.random_offset)
    inner = inner._replace(step=jnp.floor(offsets * inner.length.astype(jnp.float32)).astype(jnp.int32))
    pair = jax.tree_util.tree_map(lambda a: jnp.stack([a, a], axis=1), inner)
    accum = jax.tree_util.tree_map(lambda p: jnp.zeros((cfg.num_tasks, *p.shape), p.dtype), meta_params)
    return PESState(pair, accum)


def _inner_step(lopt, theta, state: InnerState, batch, loss_and_grad: Callable):
    loss, grads = loss_and_grad(state.task, state.params, batch)
    opt = lopt.make(theta, num_steps=state.length)
    updates, opt_state = opt.update(grads, state.opt_state, state.params, loss=loss)
    params = jax.tree_util.tree_map(lambda p, u: p + u, state.params, updates)
    return loss, state._replace(params=params, opt_state=opt_state, step=state.step + 1)


def _loss_and_grad(task: Task, params, batch):
    return jax.value_and_grad(task.loss)(params, batch)


def pes_gradient(
    lopt,
    meta_params,
    family,
    cfg: PESConfig,
    state: PESState,
    data: ImageData,
    key: jax.Array,
    mesh=None,
) -> tuple[Any, PESState, dict]:
    """One PES truncation: the meta-gradient estimate, the advanced state and metrics (pure, jittable).

    Returns:
      ``(grad, new_state, aux)`` with ``aux`` holding ``meta_loss`` (mean normalised training loss
      over both antithetic branches, tasks and steps), ``train_loss`` (un-normalised), and
      ``resets`` (number of inner problems that finished in this truncation) and ``inner_steps``.
      ``mesh`` (optional) splits the task axis over devices.
    """
    k_eps, k_steps = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(meta_params)
    eps_keys = jax.random.split(k_eps, len(leaves))
    # frozen meta-params (lopt.frozen_keys(), e.g. one of Celo's phases) are not perturbed
    keep = jax.tree_util.tree_leaves(trainable_mask(lopt, meta_params))
    eps = jax.tree_util.tree_unflatten(
        treedef,
        [
            cfg.sigma * jax.random.normal(k, (cfg.num_tasks, *p.shape), p.dtype) * float(t)
            for k, p, t in zip(eps_keys, leaves, keep)
        ],
    )
    # θ+ε and θ−ε stacked on an antithetic axis of size 2: [num_tasks, 2, ...]
    eps = shard_tasks(eps, mesh)
    theta_pair = jax.tree_util.tree_map(lambda t, e: jnp.stack([t[None] + e, t[None] - e], axis=1), meta_params, eps)
    theta_pair = shard_tasks(theta_pair, mesh)

    def one_task(theta2, pair: InnerState, task_key):
        step2 = jax.vmap(lambda th, st, batch: _inner_step(lopt, th, st, batch, _loss_and_grad), in_axes=(0, 0, None))

        def fresh_pair(k_reset):
            # the same new problem for both branches (same key), its optimizer state built from θ±ε
            return jax.vmap(lambda th: _fresh_inner(lopt, th, family, cfg, k_reset))(theta2)

        # Horizons are at least min_unroll long, so with min_unroll >= trunc_length an inner problem
        # ends at most once per truncation: its replacement is built once per truncation, not at
        # every inner step (where all but one would be discarded).
        once = cfg.min_unroll >= cfg.trunc_length
        k_steps_task, k_once = jax.random.split(task_key)
        fresh_once = fresh_pair(k_once) if once else None

        def body(carry, k):
            pair, after = carry
            k_batch, k_reset = jax.random.split(k)
            task = jax.tree_util.tree_map(lambda a: a[0], pair.task)  # both branches share the task
            batch = task.batch(data, k_batch)
            losses, pair = step2(theta2, pair, batch)
            done = pair.step[0] >= pair.length[0]
            fresh2 = fresh_once if once else fresh_pair(k_reset)
            pair = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), fresh2, pair)
            norm = task.normalized_loss(losses)
            out = (norm[0] - norm[1], after, norm.mean(), losses.mean(), done)
            return (pair, after | done), out

        keys = jax.random.split(k_steps_task, cfg.trunc_length)
        (pair, any_reset), (delta, after, meta_loss, loss, done) = jax.lax.scan(body, (pair, jnp.zeros((), bool)), keys)
        k = cfg.trunc_length
        d_before = jnp.sum(jnp.where(after, 0.0, delta)) / k
        d_after = jnp.sum(jnp.where(after, delta, 0.0)) / k
        return pair, any_reset, d_before, d_after, meta_loss.mean(), loss.mean(), done.sum()

    task_keys = shard_tasks(jax.random.split(k_steps, cfg.num_tasks), mesh)
    pair, any_reset, d_before, d_after, meta_loss, loss, resets = jax.vmap(one_task)(
        theta_pair, shard_tasks(state.inner, mesh), task_keys
    )
    pair = shard_tasks(pair, mesh)

    def per_leaf(acc, e):
        acc_new = acc + e
        shape = (cfg.num_tasks,) + (1,) * (e.ndim - 1)
        g = (d_before.reshape(shape) * acc_new + d_after.reshape(shape) * e) / (2 * cfg.sigma**2)
        acc_next = jnp.where(any_reset.reshape(shape), e, acc_new)
        return jnp.mean(g, axis=0), acc_next

    pairs = jax.tree_util.tree_map(per_leaf, state.accum, eps)
    grad = jax.tree_util.tree_map(lambda _, pr: pr[0], meta_params, pairs)
    accum = jax.tree_util.tree_map(lambda _, pr: pr[1], meta_params, pairs)
    accum = shard_tasks(accum, mesh)
    aux = {
        "meta_loss": meta_loss.mean(),
        "train_loss": loss.mean(),
        "resets": resets.sum(),
        "inner_steps": jnp.asarray(cfg.num_tasks * 2 * cfg.trunc_length, jnp.int32),
    }
    return grad, PESState(pair, accum), aux
